# PBS Pro / OpenPBS execjob_launch hook: run each job inside its wnodes VM.
#   qmgr -c "create hook wnodes event=execjob_launch"
#   qmgr -c "import hook wnodes application/x-python default execjob_launch.py"
# Together with a prologue that runs `wnodes prolog --lrms pbs "$@"`
# (examples/pbs/prologue). The hook runs as root and rewrites what the MoM
# launches: the job's program becomes `wnodes exec ... -- <program> <args>`.
import pbs

event = pbs.event()
job = event.job
argv = [str(a) for a in event.argv]
job_id = str(job.id).replace("[", "_").replace("]", "")
event.progname = "/usr/local/bin/wnodes"
event.argv = ["/usr/local/bin/wnodes", "exec", "--job", job_id, "--"] + argv
event.accept()
