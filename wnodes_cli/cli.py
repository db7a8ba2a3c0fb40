"""The click layer: parse flags, call a command module, map errors to exit codes.

Nothing here decides anything. ``main`` is the one place where exceptions
become exit codes (see errors.ExitCode and docs/exit-codes.md). Imports of the
core are deferred so that ``wnodes --version`` stays as cheap as possible: it
is the yardstick of the cache-hit benchmark.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from wnodes_cli import __version__

if TYPE_CHECKING:
    from wnodes_cli.config import Config
    from wnodes_cli.fleet import Action
    from wnodes_cli.jobinfo import JobFacts


class Options:
    def __init__(self, config_path: str | None, verbose: int) -> None:
        self.config_path = config_path
        self.verbose = verbose

    def config(self) -> Config:
        from wnodes_cli import config, log

        cfg = config.load(self.config_path)
        log.set_facility(cfg.syslog_facility)
        return cfg


F = TypeVar("F", bound=Callable[..., Any])
pass_options = click.make_pass_decorator(Options)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Longest wait for another process holding the image's lock (default: lock_timeout).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="wnodes")
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="Site config (default: $WNODES_CONFIG, else /etc/wnodes/wnodes.yaml).",
)
@click.option("-v", "--verbose", count=True, help="More detail; repeat for debug output.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """Run each batch job in its own VM, on an image the site chooses."""
    from wnodes_cli import log

    log.setup(verbose)
    ctx.obj = Options(config_path, verbose)


def job_options(f: F) -> F:
    """The job's facts as flags; each wins over what the LRMS passed."""
    for opt in reversed(
        [
            click.option(
                "--lrms",
                type=click.Choice(sorted(ADAPTER_NAMES)),
                help="Read the job as this LRMS passes it (default: detect).",
            ),
            click.option("--job", "job_id", metavar="ID", help="Job id."),
            click.option("--queue", metavar="NAME", help="Queue or partition."),
            click.option("--uid", type=click.IntRange(min=0), help="Unix uid of the job's owner."),
            click.option("--gid", type=click.IntRange(min=0), help="Unix gid of the job's owner."),
            click.option("--user", metavar="NAME", help="User name of the job's owner."),
            click.option("--group", metavar="NAME", help="Group name of the job's owner."),
            click.option("--account", metavar="NAME", help="LRMS account (project, VO)."),
            click.option("--host", metavar="NAME", help="This node's name, for hostgroup rules."),
            click.option("--vo", metavar="NAME", help="The job's VO (Grid)."),
            click.option("--fqan", "fqans", metavar="FQAN", multiple=True, help="A VOMS FQAN of the job; repeatable."),
            click.option(
                "--for-caller",
                is_flag=True,
                help="For a sudo rule: the job must be the sudo caller's; no fact may be overridden.",
            ),
            click.argument("lrms_args", nargs=-1, metavar="[LRMS_ARGS]..."),
        ]
    ):
        f = opt(f)
    return f


#: Kept here (not imported from jobinfo) so that `wnodes --version` imports nothing more.
ADAPTER_NAMES = ("htcondor", "lsf", "none", "pbs", "slurm")


def facts_from(
    lrms: str | None,
    lrms_args: tuple[str, ...] = (),
    fqans: tuple[str, ...] = (),
    for_caller: bool = False,
    **flags: str | int | None,
) -> JobFacts:
    """The job's facts from the LRMS (environment, or PBS's arguments), then the flags."""
    from wnodes_cli.errors import UsageError
    from wnodes_cli.jobinfo import from_environment
    from wnodes_cli.jobs import for_caller as restrict

    env = dict(os.environ)
    facts = from_environment(env, lrms, lrms_args)
    given: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if fqans:
        given["fqan"] = tuple(fqans)
    if for_caller:
        if given:
            raise UsageError(f"--for-caller takes the job's facts from the LRMS only, not from {', '.join(given)}")
        return restrict(facts, env)
    return facts._replace(**given)


@cli.command("select")
@job_options
@json_option
@click.option("--explain", is_flag=True, help="Show every rule and why it did or did not match.")
@pass_options
def select_cmd(opts: Options, /, as_json: bool, explain: bool, **flags: Any) -> None:
    """Print the image the site's rules choose for the job.

    Under PBS/Torque, pass the prologue's arguments on: wnodes select "$@".
    """
    from wnodes_cli.commands import select

    select.run(opts.config(), facts_from(**flags), as_json, explain)


@cli.command("fetch")
@click.argument("image")
@timeout_option
@json_option
@pass_options
def fetch_cmd(opts: Options, image: str, timeout: float | None, as_json: bool) -> None:
    """Copy IMAGE's master into the local cache once; print the copy's path."""
    from wnodes_cli.commands import fetch

    fetch.run(opts.config(), image, timeout, as_json)


@cli.command("invalidate")
@click.argument("images", nargs=-1)
@click.option("--all", "all_images", is_flag=True, help="Invalidate every configured image.")
@timeout_option
@json_option
@pass_options
def invalidate_cmd(
    opts: Options, images: tuple[str, ...], all_images: bool, timeout: float | None, as_json: bool
) -> None:
    """Make the next job fetch IMAGES afresh from their masters."""
    from wnodes_cli.commands import invalidate

    invalidate.run(opts.config(), list(images), all_images, timeout, as_json)


@cli.command("snapshot")
@click.argument("image")
@click.option("--job", "job_id", required=True, metavar="ID", help="The job the overlay is for.")
@timeout_option
@json_option
@pass_options
def snapshot_cmd(opts: Options, /, image: str, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Create the job's qcow2 overlay on IMAGE's cached copy, and its lease."""
    from wnodes_cli.commands import vm

    vm.snapshot(opts.config(), image, job_id, facts_from(None), timeout, as_json)


@cli.command("start")
@click.option("--job", "job_id", required=True, metavar="ID", help="The job whose VM to start.")
@click.option("--wait", is_flag=True, help="Wait for the guest to end and show how it ended.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=600, show_default=True, metavar="SECONDS")
@json_option
@pass_options
def start_cmd(opts: Options, /, job_id: str, wait: bool, wait_timeout: float, as_json: bool) -> None:
    """Start the job's domain (wnodes-ID) on its overlay; return once it runs."""
    from wnodes_cli.commands import vm

    vm.start(opts.config(), job_id, wait, wait_timeout, as_json)


@cli.command("stop")
@click.option("--job", "job_id", required=True, metavar="ID", help="The job whose VM to stop.")
@json_option
@pass_options
def stop_cmd(opts: Options, /, job_id: str, as_json: bool) -> None:
    """Destroy the job's domain, delete its overlay, release its lease. Safe to repeat."""
    from wnodes_cli.commands import vm

    vm.stop(opts.config(), job_id, as_json)


@cli.command("prolog")
@job_options
@timeout_option
@click.option("--wait", is_flag=True, help="Then wait for the guest to end and show its console (demos, tests).")
@json_option
@pass_options
def prolog_cmd(opts: Options, /, timeout: float | None, wait: bool, as_json: bool, **flags: Any) -> None:
    """select, fetch, snapshot and start the job's VM; undo everything on failure.

    Under PBS/Torque, pass the prologue's arguments on: wnodes prolog "$@".
    """
    from wnodes_cli.commands import vm

    vm.prolog(opts.config(), facts_from(**flags), timeout, wait, as_json)


@cli.command("epilog")
@job_options
@json_option
@pass_options
def epilog_cmd(opts: Options, /, as_json: bool, **flags: Any) -> None:
    """Stop the job's VM and clean up after it (the same as stop)."""
    from wnodes_cli.commands import vm

    vm.epilog(opts.config(), facts_from(**flags), as_json)


@cli.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--job", "job_id", metavar="ID", help="The job whose VM runs the command (default: from the LRMS).")
@click.option("--workdir", metavar="DIR", help="Working directory in the guest (created; default /tmp).")
@click.option("--env-file", type=click.Path(dir_okay=False), help="NAME=VALUE lines for the payload's environment.")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    default=120,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the VM's guest agent; then exit 76 (requeue).",
)
@click.option("--for-caller", is_flag=True, help="For a sudo rule: the job must be the sudo caller's.")
@click.option("--script", is_flag=True, help="COMMAND is a script on the host: carry it into the guest and run it.")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- COMMAND [ARGS]...")
@pass_options
def exec_cmd(
    opts: Options,
    /,
    job_id: str | None,
    workdir: str | None,
    env_file: str | None,
    wait_timeout: float,
    for_caller: bool,
    script: bool,
    argv: tuple[str, ...],
) -> int:
    """Run COMMAND inside the job's VM; its output streams back and its exit status is wnodes'."""
    from wnodes_cli.commands import vm

    return vm.exec_(opts.config(), job_id, list(argv), workdir, env_file, wait_timeout, for_caller, script)


@cli.command("ps")
@json_option
@pass_options
def ps_cmd(opts: Options, /, as_json: bool) -> None:
    """List the jobs on this node: VM state, image, version, overlay size."""
    from wnodes_cli.commands import vm

    vm.ps(opts.config(), as_json)


@cli.command("publish")
@click.argument("image")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--keep", type=click.IntRange(min=0), metavar="N", help="Keep N old versions (never the current one).")
@click.option("--rollback", "back", is_flag=True, help="Point the master back at the previous version.")
@json_option
@pass_options
def publish_cmd(opts: Options, /, image: str, file: str | None, keep: int | None, back: bool, as_json: bool) -> None:
    """Publish FILE as IMAGE's new master on shared storage, flipping its symlink atomically."""
    from wnodes_cli.commands import fleet

    fleet.publish(opts.config(), image, file, keep, back, as_json)


@cli.group("fleet")
def fleet_group() -> None:
    """Invalidate or prefetch an image across hypervisors, in phases (ClusterShell)."""


def fleet_options(f: F) -> F:
    for opt in reversed(
        [
            click.argument("image"),
            click.option("--nodes", required=True, metavar="NODESET", help="wn[001-400], @group, or a list."),
            click.option("--batch", type=click.IntRange(min=1), default=10, show_default=True, help="Nodes at a time."),
            click.option(
                "--pause",
                type=click.FloatRange(min=0),
                default=0.0,
                show_default=True,
                metavar="SECONDS",
                help="Pause between batches.",
            ),
            click.option(
                "--max-failures",
                type=click.IntRange(min=1),
                metavar="K",
                help="Stop the rollout once K nodes failed or were unreachable.",
            ),
            click.option("--dry-run", is_flag=True, help="Show the batches and run nothing."),
            click.option(
                "--command",
                "remote",
                default="wnodes",
                show_default=True,
                help="The wnodes command on the nodes (with --worker exec, %h is the node).",
            ),
            click.option(
                "--worker",
                type=click.Choice(["ssh", "exec"]),
                default="ssh",
                show_default=True,
                help="ssh to each node, or run the command locally per node (exec).",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0),
                metavar="SECONDS",
                help="Give up on a node's command after this long.",
            ),
            click.option("--ssh-options", metavar="OPTS", help="Extra ssh options, e.g. '-p 2222 -i key'."),
            json_option,
        ]
    ):
        f = opt(f)
    return f


def _fleet(action: Action, image: str, nodes: str, kw: dict[str, Any]) -> None:
    from wnodes_cli.commands import fleet

    fleet.fleet(
        action,
        image,
        nodes,
        kw["batch"],
        kw["pause"],
        kw["max_failures"],
        kw["dry_run"],
        kw["remote"],
        kw["worker"],
        kw["timeout"],
        kw["ssh_options"],
        kw["as_json"],
    )


@fleet_group.command("invalidate")
@fleet_options
def fleet_invalidate_cmd(image: str, nodes: str, **kw: Any) -> None:
    """Invalidate IMAGE's cached copy on NODESET, batch by batch."""
    _fleet("invalidate", image, nodes, kw)


@fleet_group.command("prefetch")
@fleet_options
def fleet_prefetch_cmd(image: str, nodes: str, **kw: Any) -> None:
    """Fetch IMAGE into the cache of NODESET, batch by batch."""
    _fleet("prefetch", image, nodes, kw)


@cli.group("cache")
def cache_group() -> None:
    """Inspect and clean the local image cache."""


@cache_group.command("list")
@json_option
@pass_options
def cache_list_cmd(opts: Options, as_json: bool) -> None:
    """List the cached versions, whether they are in use and when last used."""
    from wnodes_cli.commands import cache

    cache.list_(opts.config(), as_json)


@cache_group.command("gc")
@click.option("--dry-run", is_flag=True, help="Show what would be removed.")
@timeout_option
@json_option
@pass_options
def cache_gc_cmd(opts: Options, dry_run: bool, timeout: float | None, as_json: bool) -> None:
    """Remove unused superseded, invalidated and orphaned copies; enforce cache_max_bytes."""
    from wnodes_cli.commands import cache

    cache.gc(opts.config(), dry_run, timeout, as_json)


@cli.command("exit-codes")
@json_option
def exit_codes_cmd(as_json: bool) -> None:
    """Print the exit-code table (what an LRMS should do with each code)."""
    from wnodes_cli.errors import EXIT_CLASS, ExitCode
    from wnodes_cli.output import emit_json, table

    rows = [(int(c), c.name, EXIT_CLASS[c]) for c in ExitCode]
    if as_json:
        emit_json([{"code": c, "name": n, "class": k} for c, n, k in rows])
    else:
        table(rows, ["code", "name", "class"])


def main(argv: list[str] | None = None) -> int:
    from wnodes_cli.errors import ExitCode, WnodesError

    try:
        rv = cli.main(args=argv, prog_name="wnodes", standalone_mode=False)
        return int(rv) if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        # One line, like every other error: a prolog's stderr is one syslog record.
        where = f"wnodes {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else "wnodes"
        message = " ".join(exc.format_message().split()).rstrip(".")
        sys.stderr.write(f"wnodes: error: {message}; see '{where} --help'\n")
        return int(ExitCode.USAGE)
    except click.ClickException as exc:
        sys.stderr.write(f"wnodes: error: {exc.format_message()}\n")
        return int(ExitCode.USAGE)
    except click.exceptions.Abort:
        return 130
    except WnodesError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say so, keep the traceback for the log
        import logging

        logging.getLogger("wnodes").debug("internal error", exc_info=True)
        sys.stderr.write(f"wnodes: internal error: {type(exc).__name__}: {exc}; rerun with -vv and report it\n")
        return int(ExitCode.SOFTWARE)


def _report(exc: Exception) -> int:
    import logging

    from wnodes_cli.errors import ConfigError, WnodesError

    assert isinstance(exc, WnodesError)
    lines = exc.problems if isinstance(exc, ConfigError) else [exc.message]
    logger = logging.getLogger("wnodes")
    for line in lines:
        sys.stderr.write(f"wnodes: error: {line}\n")
        from wnodes_cli import log

        if log.to_syslog():
            logger.error("%s", line)
    return int(exc.exit_code)
