"""The documentation site's promises, checked: the FAQ quotes messages daemonctx really prints,
the option table covers every option, the project's metadata and LICENSE agree, and the theme
gives code room.

FAQ messages (docs/faq.md) are marked for this module: a MyST comment line
``% faq-message: NAME`` right before a fenced block.  In the block, lines starting with ``$ ``
are the commands a reader types and lines reading ``...`` stand for an elided traceback; every
other line is output that the scenario ``NAME`` in :data:`SCENARIOS` must print, as a whole
line.  The FAQ's example values (the pids 4242 and 4243, paths such as ``/run/app``) are
replaced by what the scenario used; everything else must match word for word, so a message
changed in the code fails here, naming the scenario, the FAQ's line and what was printed.
"""

from __future__ import annotations

import ast
import configparser
import email
import inspect
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemonctx.pidfile import holder_pid
from tests.helpers import (
    PYTHON,
    REPO,
    let_others_traverse,
    wait_file_text,
    wait_for,
    wait_pid_gone,
)

DOCS = REPO / "docs"
FAQ = DOCS / "faq.md"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
# The PATH the FAQ's "command not found" message shows.
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
ANY_PID = re.compile(r"\d+")
MARKED_BLOCK = re.compile(r"^% faq-message: ([a-z0-9-]+)\n```[a-z]*\n(.*?)\n```$", re.M | re.S)


# --- running a scenario ---------------------------------------------------------------------


@dataclass
class Seen:
    """What a scenario printed, and the FAQ's example values with what they stand for here."""

    output: str
    values: dict[str, str | re.Pattern[str]] = field(default_factory=dict)


@dataclass
class Scene:
    """A scenario's place: a private directory; every pid it starts is killed at the end."""

    tmp: Path
    spawned: list[int]

    @property
    def run_app(self) -> Path:
        """``/run/app`` of the FAQ: a root-owned directory (0755) other users can reach."""
        path = self.tmp / "run" / "app"
        if not path.exists():
            path.mkdir(parents=True)
            os.chmod(path.parent, 0o755)
            os.chmod(path, 0o755)
            let_others_traverse(path)
        return path

    @property
    def pidfile(self) -> Path:
        return self.run_app / "app.pid"

    def values(self, **more: str | re.Pattern[str]) -> dict[str, str | re.Pattern[str]]:
        return {"/run/app": str(self.run_app), **more}

    def command(self, *args: str, as_nobody: bool = False,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``daemonctx ARGS`` (as ``python -m daemonctx``); a daemon it started is killed later."""
        argv = [*(NOBODY if as_nobody else []), PYTHON, "-m", "daemonctx", *args]
        result = subprocess.run(argv, capture_output=True, text=True, cwd=self.tmp,
                                env=env or ENV, stdin=subprocess.DEVNULL, timeout=60,
                                check=False)
        self.adopt(self.pidfile)
        return result

    def python(self, script: str, *args: str, name: str = "app.py") -> tuple[
            subprocess.CompletedProcess[str], Path]:
        """Run a program using daemonctx, written to ``NAME`` in the scenario's directory."""
        path = self.tmp / name
        path.write_text(textwrap.dedent(script))
        result = subprocess.run([PYTHON, str(path), *args], capture_output=True, text=True,
                                cwd=self.tmp, env=ENV, stdin=subprocess.DEVNULL, timeout=60,
                                check=False)
        self.adopt(self.pidfile)
        return result, path

    def adopt(self, pidfile: Path) -> int | None:
        try:
            pid = holder_pid(pidfile)
        except Exception:
            return None
        if pid is not None:
            self.spawned.append(pid)
        return pid

    def daemon(self) -> int:
        """Start a daemon holding :attr:`pidfile` with the command; its pid."""
        started = self.command("start", "--pidfile", str(self.pidfile), "--", "sleep", "300")
        assert started.returncode == 0, started.stderr
        pid = holder_pid(self.pidfile)
        assert pid is not None
        return pid


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def needs_nobody() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as a second user (nobody)")


# --- the scenarios, one per message the FAQ quotes --------------------------------------------


def cli_already_running(scene: Scene) -> Seen:
    pid = scene.daemon()
    second = scene.command("start", "--pidfile", str(scene.pidfile), "--", "sleep", "300")
    assert second.returncode == 1
    return Seen(output(second), scene.values(**{"4242": str(pid)}))


HOLD_PIDFILE = """\
    import sys, time, daemonctx
    with daemonctx.DaemonContext(pidfile=daemonctx.PIDFile(sys.argv[1])):
        time.sleep(300)
"""


def lib_already_running(scene: Scene) -> Seen:
    first, _ = scene.python(HOLD_PIDFILE, str(scene.pidfile))
    assert first.returncode == 0, first.stderr
    pid = holder_pid(scene.pidfile)
    second, _ = scene.python(HOLD_PIDFILE, str(scene.pidfile))
    assert second.returncode == 1
    return Seen(output(second), scene.values(**{"4242": str(pid)}))


def cli_pidfile_directory_missing(scene: Scene) -> Seen:
    missing = scene.tmp / "missing" / "app.pid"
    result = scene.command("start", "--pidfile", str(missing), "--", "sleep", "300")
    assert result.returncode == 3
    return Seen(output(result), {"/run/app": str(missing.parent)})


def lib_pidfile_directory_missing(scene: Scene) -> Seen:
    missing = scene.tmp / "missing" / "app.pid"
    result, _ = scene.python(HOLD_PIDFILE, str(missing))
    assert result.returncode == 1
    return Seen(output(result), {"/run/app": str(missing.parent)})


def cli_pidfile_symlink(scene: Scene) -> Seen:
    scene.pidfile.symlink_to(scene.tmp / "elsewhere")
    result = scene.command("start", "--pidfile", str(scene.pidfile), "--", "sleep", "300")
    assert result.returncode == 3
    return Seen(output(result), scene.values())


def cli_pidfile_world_writable(scene: Scene) -> Seen:
    shared = scene.tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    result = scene.command("start", "--pidfile", str(shared / "app.pid"), "--", "sleep", "300")
    assert result.returncode == 3
    return Seen(output(result), {"/srv/shared": str(shared)})


def _python3_on_path(scene: Scene) -> dict[str, str]:
    """An environment whose ``python3`` is this interpreter (the FAQ runs ``python3``)."""
    bin_dir = scene.tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / "python3"
    if not link.exists():
        link.symlink_to(PYTHON)
    return {**ENV, "PATH": f"{bin_dir}:{ENV.get('PATH', PLAIN_PATH)}"}


def cli_exited_relative_script(scene: Scene) -> Seen:
    (scene.tmp / "ticker.py").write_text("import time\ntime.sleep(300)\n")
    result = scene.command("start", "--pidfile", str(scene.pidfile), "--", "python3",
                           "ticker.py", env=_python3_on_path(scene))
    assert result.returncode == 3
    return Seen(output(result), scene.values(**{"4242": ANY_PID, "/srv/app": str(scene.tmp)}))


def cli_exited_with_log(scene: Scene) -> Seen:
    (scene.tmp / "ticker.py").write_text("import time\ntime.sleep(300)\n")
    log = scene.tmp / "app.log"
    result = scene.command("start", "--pidfile", str(scene.pidfile), "--stdout", str(log),
                           "--", "python3", "ticker.py", env=_python3_on_path(scene))
    assert result.returncode == 3
    return Seen(output(result) + log.read_text(),
                scene.values(**{"4242": ANY_PID, "/var/log/app.log": str(log),
                                "/srv/app": str(scene.tmp)}))


def cli_command_not_found(scene: Scene) -> Seen:
    result = scene.command("start", "--pidfile", str(scene.pidfile), "--", "app",
                           env={**ENV, "PATH": PLAIN_PATH})
    assert result.returncode == 3
    return Seen(output(result))


def cli_command_not_executable(scene: Scene) -> Seen:
    script = scene.tmp / "ticker.py"
    script.write_text("import time\ntime.sleep(300)\n")
    os.chmod(script, 0o644)
    result = scene.command("start", "--pidfile", str(scene.pidfile), "--", "./ticker.py")
    assert result.returncode == 3
    return Seen(output(result))


def cli_no_ready(scene: Scene) -> Seen:
    result = scene.command("start", "--pidfile", str(scene.pidfile), "--notify", "--timeout",
                           "1", "--", "sleep", "300")
    assert result.returncode == 3
    assert holder_pid(scene.pidfile) is None
    return Seen(output(result), {"app (pid 4242)": re.compile(r"sleep \(pid \d+\)"),
                                 "within 30 s": "within 1 s"})


def lib_readiness_timeout(scene: Scene) -> Seen:
    result, _ = scene.python("""\
        import time, daemonctx
        with daemonctx.DaemonContext(defer_ready=True, startup_timeout=1) as context:
            time.sleep(300)
            context.notify_ready()
    """)
    assert result.returncode == 1
    return Seen(output(result), {"4242": ANY_PID, "(60 s)": "(1 s)"})


def lib_startup_exception(scene: Scene) -> Seen:
    result, _ = scene.python(f"""\
        import daemonctx
        with daemonctx.DaemonContext(defer_ready=True) as context:
            open({str(scene.tmp / "etc" / "app.toml")!r})
            context.notify_ready()
    """)
    assert result.returncode == 1
    return Seen(output(result), {"/etc/app/app.toml": str(scene.tmp / "etc" / "app.toml")})


def cli_user_not_root(scene: Scene) -> Seen:
    needs_nobody()
    result = scene.command("start", "--pidfile", str(scene.pidfile), "--user", "root", "--",
                           "sleep", "300", as_nobody=True)
    assert result.returncode == 3
    return Seen(output(result), {"uid 1000": "uid 65534"})


def cli_pidfile_directory_not_writable(scene: Scene) -> Seen:
    needs_nobody()
    result = scene.command("start", "--pidfile", str(scene.pidfile), "--", "sleep", "300",
                           as_nobody=True)
    assert result.returncode == 3
    return Seen(output(result), scene.values(**{"uid 1000 gid 1000": "uid 65534 gid 65534"}))


def cli_user_log_not_writable(scene: Scene) -> Seen:
    needs_nobody()
    logs = scene.tmp / "logs"
    logs.mkdir()
    os.chown(logs, 65534, 65534)
    log = logs / "app.log"
    log.write_text("")
    os.chmod(log, 0o600)  # root's file, in a directory nobody owns
    let_others_traverse(logs)
    result = scene.command("start", "--pidfile", str(scene.pidfile), "--user", "nobody",
                           "--stdout", str(log), "--", "sleep", "300")
    assert result.returncode == 3
    return Seen(output(result), {"/srv/app/logs/app.log": str(log)})


def cli_unknown_user(scene: Scene) -> Seen:
    needs_nobody()  # --user needs root
    result = scene.command("start", "--pidfile", str(scene.pidfile), "--user", "app", "--",
                           "sleep", "300")
    if "unknown user" not in result.stderr:
        pytest.skip("this machine has a user named 'app'")
    assert result.returncode == 3
    return Seen(output(result))


def cli_status_pid_reused(scene: Scene) -> Seen:
    scene.pidfile.write_text(f"{os.getpid()}\n")  # alive, holds no lock
    result = scene.command("status", "--pidfile", str(scene.pidfile))
    assert result.returncode == 1
    return Seen(output(result), scene.values(**{"4242": str(os.getpid())}))


def cli_stop_removes_leftover(scene: Scene) -> Seen:
    scene.pidfile.write_text(f"{os.getpid()}\n")
    result = scene.command("stop", "--pidfile", str(scene.pidfile))
    assert result.returncode == 1
    assert not scene.pidfile.exists()
    return Seen(output(result), scene.values())


def cli_status_impostor(scene: Scene) -> Seen:
    needs_nobody()
    scene.pidfile.write_text(f"{os.getpid()}\n")
    locker = subprocess.Popen([*NOBODY, "flock", str(scene.pidfile), "sleep", "300"],
                              stdin=subprocess.DEVNULL)
    scene.spawned.append(locker.pid)
    wait_for(lambda: holder_pid(scene.pidfile) is not None, what="nobody's flock")
    result = scene.command("status", "--pidfile", str(scene.pidfile))
    assert result.returncode == 4
    return Seen(output(result), scene.values(**{"4242": str(os.getpid()), "4243": ANY_PID}))


def cli_status_leftovers(scene: Scene) -> Seen:
    started = scene.command("start", "--pidfile", str(scene.pidfile), "--", "sh", "-c",
                            "sleep 300 & sleep 2")
    assert started.returncode == 0, started.stderr
    main = holder_pid(scene.pidfile)
    assert main is not None
    wait_pid_gone(main)
    result = scene.command("status", "--pidfile", str(scene.pidfile))
    assert result.returncode == 4
    stop = scene.command("stop", "--pidfile", str(scene.pidfile))
    assert stop.returncode == 0, stop.stderr
    return Seen(output(result), scene.values(**{"4242": str(main), "4243": ANY_PID}))


def cli_status_not_a_file(scene: Scene) -> Seen:
    scene.pidfile.mkdir()
    result = scene.command("status", "--pidfile", str(scene.pidfile))
    assert result.returncode == 4
    return Seen(output(result), scene.values())


def cli_stop_not_running(scene: Scene) -> Seen:
    result = scene.command("stop", "--pidfile", str(scene.pidfile))
    assert result.returncode == 1
    return Seen(output(result), scene.values())


def lib_thread_warning(scene: Scene) -> Seen:
    result, path = scene.python("""\
        import sys, threading, time
        import daemonctx
        threading.Thread(target=time.sleep, args=(300,), name="metrics", daemon=True).start()
        context = daemonctx.DaemonContext()
        with context:
            pass
    """)
    assert result.returncode == 0, result.stderr
    return Seen(output(result), {"/srv/app/app.py:5": f"{path}:5"})


def lib_nested_context(scene: Scene) -> Seen:
    err = scene.tmp / "daemon.err"
    result, _ = scene.python(f"""\
        import daemonctx
        outer = daemonctx.DaemonContext(pidfile=daemonctx.PIDFile({str(scene.pidfile)!r}),
                                        stderr={str(err)!r})
        with outer:
            with daemonctx.DaemonContext():
                pass
    """)
    assert result.returncode == 0, result.stderr
    text = wait_file_text(err, predicate=lambda t: "DaemonAlreadyOpenError:" in t)
    return Seen(text, scene.values(**{"4242": ANY_PID}))


SCENARIOS: dict[str, Callable[[Scene], Seen]] = {
    "cli-already-running": cli_already_running,
    "lib-already-running": lib_already_running,
    "cli-pidfile-directory-missing": cli_pidfile_directory_missing,
    "lib-pidfile-directory-missing": lib_pidfile_directory_missing,
    "cli-pidfile-symlink": cli_pidfile_symlink,
    "cli-pidfile-world-writable": cli_pidfile_world_writable,
    "cli-exited-relative-script": cli_exited_relative_script,
    "cli-exited-with-log": cli_exited_with_log,
    "cli-command-not-found": cli_command_not_found,
    "cli-command-not-executable": cli_command_not_executable,
    "cli-no-ready": cli_no_ready,
    "lib-readiness-timeout": lib_readiness_timeout,
    "lib-startup-exception": lib_startup_exception,
    "cli-user-not-root": cli_user_not_root,
    "cli-pidfile-directory-not-writable": cli_pidfile_directory_not_writable,
    "cli-user-log-not-writable": cli_user_log_not_writable,
    "cli-unknown-user": cli_unknown_user,
    "cli-status-pid-reused": cli_status_pid_reused,
    "cli-stop-removes-leftover": cli_stop_removes_leftover,
    "cli-status-impostor": cli_status_impostor,
    "cli-status-leftovers": cli_status_leftovers,
    "cli-status-not-a-file": cli_status_not_a_file,
    "cli-stop-not-running": cli_stop_not_running,
    "lib-thread-warning": lib_thread_warning,
    "lib-nested-context": lib_nested_context,
}


# --- the FAQ's quotes -------------------------------------------------------------------------


def faq_quotes() -> dict[str, list[str]]:
    """``{scenario: [the output lines the FAQ quotes]}``, in the FAQ's order."""
    quotes: dict[str, list[str]] = {}
    for name, body in MARKED_BLOCK.findall(FAQ.read_text(encoding="utf-8")):
        assert name not in quotes, f"docs/faq.md marks two blocks {name!r}"
        lines = [line for line in body.splitlines()
                 if not line.startswith("$ ") and line != "..."]
        assert lines, f"docs/faq.md's block {name!r} quotes no output"
        quotes[name] = lines
    return quotes


def pattern_for(quoted: str, values: dict[str, str | re.Pattern[str]]) -> re.Pattern[str]:
    """The FAQ's line as a regex: literal, but for its example values (pids, paths)."""
    every = {"4242": ANY_PID, "4243": ANY_PID, **values}
    keys = sorted(every, key=len, reverse=True)  # "/run/app/x" before "/run/app"
    parts = re.split("(" + "|".join(map(re.escape, keys)) + ")", quoted)
    regex = ""
    for index, part in enumerate(parts):
        if index % 2 == 0:
            regex += re.escape(part)
        else:
            value = every[part]
            regex += value.pattern if isinstance(value, re.Pattern) else re.escape(value)
    return re.compile(regex)


def test_faq_marks_a_scenario_for_every_quoted_message_and_no_other() -> None:
    quoted = set(faq_quotes())
    assert quoted == set(SCENARIOS), (
        f"quoted in the FAQ without a scenario here: {sorted(quoted - set(SCENARIOS))}; "
        f"scenarios the FAQ no longer quotes: {sorted(set(SCENARIOS) - quoted)}")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_faq_message_is_what_daemonctx_prints(name: str, tmp_path: Path,
                                              spawned: list[int]) -> None:
    quotes = faq_quotes()
    if name not in quotes:
        pytest.fail(f"docs/faq.md does not quote the scenario {name!r}")
    scene = Scene(tmp_path, spawned)
    seen = SCENARIOS[name](scene)
    printed = seen.output.splitlines()
    for line in quotes[name]:
        pattern = pattern_for(line, seen.values)
        assert any(pattern.fullmatch(out) for out in printed), (
            f"docs/faq.md quotes, for {name!r}:\n    {line}\nbut daemonctx printed:\n"
            + "\n".join(f"    {out}" for out in printed)
            + "\nUpdate the FAQ (cause and fix too) if the new message is right.")


# --- the option table -------------------------------------------------------------------------


def option_table() -> dict[str, list[str]]:
    """The rows of the option table in docs/reference/daemoncontext.md: ``{option: cells}``."""
    text = (DOCS / "reference" / "daemoncontext.md").read_text(encoding="utf-8")
    header = "| option | type | default | what it does | difference from python-daemon |"
    assert header in text
    rows: dict[str, list[str]] = {}
    for line in text.split(header, 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        assert len(cells) == 5, f"a row of the option table has {len(cells)} cells: {line}"
        for option in re.findall(r"`(\w+)`", cells[0]):
            rows[option] = cells
    return rows


def test_option_table_has_a_row_for_every_daemoncontext_option() -> None:
    from daemonctx import DaemonContext

    options = [name for name in inspect.signature(DaemonContext).parameters]
    assert list(option_table()) == options


def test_option_table_gives_each_option_its_real_default() -> None:
    from daemonctx import DaemonContext

    rows = option_table()
    for name, parameter in inspect.signature(DaemonContext).parameters.items():
        cell = rows[name][2]
        shown = re.match(r"`([^`]+)`", cell)
        assert shown is not None, f"the option table's default for {name} starts with no value"
        assert ast.literal_eval(shown.group(1)) == parameter.default, (
            f"the option table gives {name} the default {cell!r}, the code "
            f"{parameter.default!r}")


def test_option_table_documents_the_pidfile_as_locked_before_the_privilege_drop() -> None:
    what_it_does = option_table()["pidfile"][3]
    assert "before it drops privileges" in what_it_does
    assert "caller's working directory when the `PIDFile` is created" in what_it_does


def test_gid_default_in_the_table_is_the_users_primary_group() -> None:
    gid = option_table()["gid"]
    assert "primary group of `uid`" in gid[2]
    assert "caller's gid" in gid[4]


# --- LICENSE, project_urls, changelog ----------------------------------------------------------


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg", encoding="utf-8")
    return config


def test_license_file_is_the_mit_license_setup_cfg_names() -> None:
    assert setup_cfg()["metadata"]["license"] == "MIT"
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4}(-\d{4})? daemonctx developers$", text, re.M)
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


EXPECTED_URLS = {
    "Documentation": "https://github.com/daemonctx/daemonctx/tree/main/docs",
    "Source": "https://github.com/daemonctx/daemonctx",
    "Changelog": "https://github.com/daemonctx/daemonctx/blob/main/CHANGELOG.md",
    "Issues": "https://github.com/daemonctx/daemonctx/issues",
}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tarfile.TarFile:
    """The source distribution, built offline by setuptools from a copy of the checkout.

    (A wheel would need the ``wheel`` package, which a fresh virtual environment lacks; the
    sdist's PKG-INFO is the same core metadata, written by the same code.)
    """
    tmp = tmp_path_factory.mktemp("sdist")
    tree = tmp / "tree"
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        tree.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(REPO / "daemonctx", tree / "daemonctx",
                    ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(tmp)],
        capture_output=True, text=True, cwd=tree, timeout=240, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    return tarfile.open(tmp / build.stdout.split()[-1])


def sdist_member(archive: tarfile.TarFile, name: str) -> bytes:
    (member,) = [m for m in archive.getmembers() if m.name.count("/") == 1
                 and m.name.endswith("/" + name)]
    extracted = archive.extractfile(member)
    assert extracted is not None
    return extracted.read()


def test_sdist_metadata_carries_the_project_urls_and_the_license(
        sdist: tarfile.TarFile) -> None:
    metadata = email.message_from_bytes(sdist_member(sdist, "PKG-INFO"))
    urls = dict(entry.split(", ", 1) for entry in metadata.get_all("Project-URL", []))
    assert urls == EXPECTED_URLS
    assert metadata["License"] == "MIT"
    assert sdist_member(sdist, "LICENSE") == (REPO / "LICENSE").read_bytes()


def test_changelog_lists_the_unreleased_changes_then_the_current_version() -> None:
    import daemonctx

    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    versions = re.findall(r"^## (\S+)", text, re.M)
    assert versions[:2] == ["Unreleased", daemonctx.__version__]
    # The docs page is the same file, included: one changelog, on GitHub and in the docs.
    page = (DOCS / "changelog.md").read_text(encoding="utf-8")
    assert "```{include} ../CHANGELOG.md" in page


# --- the built site ---------------------------------------------------------------------------


@pytest.fixture
def built_site(built_docs: Path) -> Path:
    """The HTML documentation, built once per run as CI builds it (tests/conftest.py)."""
    return built_docs


def test_site_uses_furo_whose_code_blocks_scroll_inside_the_content(built_site: Path) -> None:
    pages = {page: page.read_text(encoding="utf-8") for page in built_site.rglob("*.html")}
    assert all("/styles/furo.css" in html for html in pages.values())
    in_code = [page for page, html in pages.items()
               if any("daemonctx start --" in re.sub(r"<[^>]+>", "", block)
                      for block in re.findall(r"<pre>(.*?)</pre>", html, re.S))]
    assert in_code, "no page shows a daemonctx start command in a code block"
    css = (built_site / "_static" / "styles" / "furo.css").read_text(encoding="utf-8")
    # A long `daemonctx start ...` line scrolls inside its block, and a wide table inside its
    # wrapper, instead of widening the page past the content column.
    assert re.search(r"(?<![-\w])pre\{[^}]*overflow:auto", css)
    assert re.search(r"\.table-wrapper[^{]*\{[^}]*overflow-x:auto", css)
    assert re.search(r"\.content\{[^}]*width:46em", css)


def test_site_links_the_new_pages_from_the_front_page(built_site: Path) -> None:
    index = (built_site / "index.html").read_text(encoding="utf-8")
    for page in ("faq.html", "changelog.html", "benchmarks-results.html"):
        assert f'href="{page}' in index, f"the front page does not link {page}"


def test_faq_shows_every_quoted_message(built_site: Path) -> None:
    import html as html_module

    page = html_module.unescape(re.sub(r"<[^>]+>", "",
                                       (built_site / "faq.html").read_text(encoding="utf-8")))
    for lines in faq_quotes().values():
        for line in lines:
            assert line in page


def test_benchmark_page_shows_its_plots(built_site: Path) -> None:
    html = (built_site / "benchmarks-results.html").read_text(encoding="utf-8")
    for plot in re.findall(r"_static/(bench-[\w-]+\.png)", (DOCS / "benchmarks-results.md")
                           .read_text(encoding="utf-8")):
        assert re.search(rf'<img[^>]+src="_images/{re.escape(plot)}"', html), plot
        assert (built_site / "_images" / plot).stat().st_size > 1000

