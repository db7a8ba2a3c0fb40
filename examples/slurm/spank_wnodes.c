/*
 * spank_wnodes: run every Slurm task inside the job's wnodes VM, transparently.
 *
 * slurmd calls slurm_spank_task_init() as the job's user, just before it
 * execve()s the task. This plugin execs instead:
 *
 *   sudo -n WNODES [--config CONFIG] exec --for-caller --job ID --workdir CWD
 *        --env-file FILE --script -- ARGV...
 *
 * so that the task's process becomes `wnodes exec`: the payload runs in the
 * VM, its output goes to the task's stdout/stderr (the job's output files),
 * signals (scancel, time limit) are forwarded, and its exit status is the
 * task's. --script carries the batch script (a host file) into the guest. The
 * job's environment goes with it in FILE (a file of the user's own).
 *
 * Build:  gcc -shared -fPIC -o spank_wnodes.so spank_wnodes.c   (libslurm-dev)
 * plugstack.conf:
 *   required /usr/local/lib/slurm/spank_wnodes.so wnodes=/usr/local/bin/wnodes
 * sudoers (examples/sudoers): the user may run exactly
 *   /usr/local/bin/wnodes exec --for-caller *
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <slurm/spank.h>

SPANK_PLUGIN(wnodes, 1);

extern char **environ;

static char wnodes_path[1024] = "/usr/local/bin/wnodes";
static char sudo_path[1024] = "/usr/bin/sudo";
static char config_path[1024] = "";

static void option(const char *arg, const char *key, char *dst, size_t len)
{
	size_t n = strlen(key);
	if (strncmp(arg, key, n) == 0 && arg[n] == '=') {
		strncpy(dst, arg + n + 1, len - 1);
		dst[len - 1] = '\0';
	}
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	for (int i = 0; i < ac; i++) {
		option(av[i], "wnodes", wnodes_path, sizeof(wnodes_path));
		option(av[i], "sudo", sudo_path, sizeof(sudo_path));
		option(av[i], "config", config_path, sizeof(config_path));
	}
	return ESPANK_SUCCESS;
}

/* The task's environment, one NAME=VALUE per line, in a file of the user's own. */
static int write_env(uint32_t job, char *path, size_t len)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(path, len, "%s/.wnodes-env-%u-%d", tmp && *tmp ? tmp : "/tmp", job, (int)getpid());
	FILE *fh = fopen(path, "w");
	if (!fh)
		return -1;
	for (char **e = environ; *e; e++)
		if (!strchr(*e, '\n'))
			fprintf(fh, "%s\n", *e);
	return fclose(fh);
}

int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
	uint32_t job = 0;
	int argc = 0;
	char **argv = NULL;
	char cwd[4096], envfile[4096], jobid[32];

	if (!spank_remote(sp))
		return ESPANK_SUCCESS;
	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS || argc < 1)
		return ESPANK_ERROR;
	if (!getcwd(cwd, sizeof(cwd)))
		strcpy(cwd, "/tmp");
	if (write_env(job, envfile, sizeof(envfile)) != 0) {
		slurm_error("wnodes: cannot write the job's environment: %m");
		return ESPANK_ERROR;
	}
	snprintf(jobid, sizeof(jobid), "%u", job);

	char **nargv = calloc(argc + 20, sizeof(char *));
	int n = 0;
	nargv[n++] = sudo_path;
	nargv[n++] = "-n";
	nargv[n++] = wnodes_path;
	if (config_path[0]) {
		nargv[n++] = "--config";
		nargv[n++] = config_path;
	}
	nargv[n++] = "exec";
	nargv[n++] = "--for-caller";
	nargv[n++] = "--job";
	nargv[n++] = jobid;
	nargv[n++] = "--workdir";
	nargv[n++] = cwd;
	nargv[n++] = "--env-file";
	nargv[n++] = envfile;
	nargv[n++] = "--script";
	nargv[n++] = "--";
	for (int i = 0; i < argc; i++)
		nargv[n++] = argv[i];
	nargv[n] = NULL;
	execv(sudo_path, nargv);
	slurm_error("wnodes: cannot run %s: %m", sudo_path);
	return ESPANK_ERROR;
}
