"""Draw the documentation's pictures as SVG files in docs/_static/, with the standard library only.

The pictures are committed, so building the docs needs neither network nor graphviz.  After
changing this file, regenerate them from the repository's root and commit the result::

    python docs/diagrams.py            # writes docs/_static/*.svg
    python docs/diagrams.py --check    # exits 1 if a committed SVG differs from what it draws

What is drawn:

* ``tree-0-start.svg`` ... ``tree-4-ready.svg``: the process tree before and after each fork of
  ``DaemonContext.open()`` (pids, parents, sessions, process groups, the terminal), used by
  docs/explanation/detach-sequence.md;
* ``handshake.svg``: the launcher/daemon start-up handshake as a sequence diagram, used by
  docs/explanation/startup-handshake.md;
* ``architecture.svg``: the modules in their layers, used by docs/explanation/architecture.md.

The pids are an example (a shell 4000 runs ``python app.py`` as 4101); what the figures show
is what daemonctx.context and daemonctx.steps do, in that order.  Output is deterministic, so an
unchanged drawing leaves the committed files byte-for-byte the same.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

STATIC = Path(__file__).resolve().parent / "_static"

FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
INK = "#1f2328"
MUTED = "#6e7781"
COLOURS = {
    "init": ("#eaeef2", "#57606a"),
    "shell": ("#eaeef2", "#57606a"),
    "launcher": ("#ddf4ff", "#0969da"),
    "child": ("#fff8c5", "#9a6700"),
    "daemon": ("#dafbe1", "#1a7f37"),
    "gone": ("#ffffff", "#8c959f"),
}


# --- a minimal SVG writer -------------------------------------------------------------------


@dataclass
class Svg:
    """An SVG document built from a few primitives; ``str()`` gives the file's text."""

    width: int
    height: int
    title: str
    parts: list[str] = field(default_factory=list)

    def rect(self, x: float, y: float, w: float, h: float, *, fill: str = "none",
             stroke: str = INK, dash: str | None = None, radius: float = 6,
             width: float = 1.5) -> None:
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(
            f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" rx="{radius:g}" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="{width:g}"{dashes}/>')

    def text(self, x: float, y: float, content: str, *, size: float = 13, anchor: str = "start",
             colour: str = INK, bold: bool = False, italic: bool = False,
             mono: bool = False) -> None:
        style = ' font-weight="bold"' if bold else ""
        style += ' font-style="italic"' if italic else ""
        family = MONO if mono else FONT
        self.parts.append(
            f'<text x="{x:g}" y="{y:g}" font-family="{family}" font-size="{size:g}" '
            f'text-anchor="{anchor}" fill="{colour}" xml:space="preserve"{style}>'
            f"{escape(content)}</text>")

    def line(self, x1: float, y1: float, x2: float, y2: float, *, colour: str = INK,
             dash: str | None = None, arrow: bool = False, width: float = 1.5) -> None:
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        head = ' marker-end="url(#arrow)"' if arrow else ""
        self.parts.append(
            f'<line x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" stroke="{colour}" '
            f'stroke-width="{width:g}"{dashes}{head}/>')

    def cross(self, x: float, y: float, size: float = 7) -> None:
        self.line(x - size, y - size, x + size, y + size, colour="#cf222e", width=2.5)
        self.line(x - size, y + size, x + size, y - size, colour="#cf222e", width=2.5)

    def __str__(self) -> str:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
            f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" role="img" '
            f'aria-label="{escape(self.title)}">\n'
            f"<title>{escape(self.title)}</title>\n"
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
            'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
            f'fill="{INK}"/></marker></defs>\n'
            f'<rect width="{self.width}" height="{self.height}" fill="#ffffff"/>\n'
        )
        return head + "\n".join(self.parts) + "\n</svg>\n"


# --- process trees --------------------------------------------------------------------------


@dataclass
class Proc:
    """One process box: what it is, its ids, and where it is drawn."""

    key: str
    label: str
    kind: str
    pid: int
    ppid: int
    pgid: int
    sid: int
    tty: str | None
    x: float
    y: float
    parent: str | None = None
    note: str = ""


BOX_W, BOX_H = 250, 74
NOTE_X = 510  # right of every session box


def _draw_proc(svg: Svg, proc: Proc) -> None:
    fill, stroke = COLOURS[proc.kind]
    gone = proc.kind == "gone"
    svg.rect(proc.x, proc.y, BOX_W, BOX_H, fill=fill, stroke=stroke,
             dash="5 4" if gone else None, width=2)
    colour = MUTED if gone else INK
    svg.text(proc.x + 10, proc.y + 20, proc.label, bold=True, colour=colour)
    svg.text(proc.x + 10, proc.y + 40, f"pid {proc.pid}  ppid {proc.ppid}", mono=True,
             size=12, colour=colour)
    tty = proc.tty if proc.tty else "no tty"
    svg.text(proc.x + 10, proc.y + 58, f"pgid {proc.pgid}  sid {proc.sid}  {tty}", mono=True,
             size=12, colour=colour)
    if proc.note:
        svg.text(NOTE_X, proc.y + 40, proc.note, size=12, italic=True, colour=MUTED)


def _draw_tree(title: str, caption: str, procs: list[Proc],
               sessions: list[tuple[str, list[str]]]) -> Svg:
    height = int(max(p.y for p in procs)) + BOX_H + 60
    svg = Svg(820, height, title)
    by_key = {p.key: p for p in procs}
    for label, members in sessions:
        boxes = [by_key[m] for m in members]
        left = min(b.x for b in boxes) - 14
        top = min(b.y for b in boxes) - 30
        right = max(b.x for b in boxes) + BOX_W + 14
        bottom = max(b.y for b in boxes) + BOX_H + 12
        svg.rect(left, top, right - left, bottom - top, stroke="#8250df", dash="3 3",
                 radius=10, width=1.2, fill="#fbf8ff")
        svg.text(left + 8, top + 18, label, size=12, colour="#8250df")
    for proc in procs:
        if proc.parent is not None:
            parent = by_key[proc.parent]
            svg.line(parent.x + 40, parent.y + BOX_H, parent.x + 40, proc.y + BOX_H / 2,
                     colour=MUTED)
            svg.line(parent.x + 40, proc.y + BOX_H / 2, proc.x, proc.y + BOX_H / 2,
                     colour=MUTED, arrow=True)
    for proc in procs:
        _draw_proc(svg, proc)
    svg.text(20, 26, title, size=15, bold=True)
    svg.text(20, height - 14, caption, size=12, colour=MUTED)
    return svg


def process_trees() -> dict[str, Svg]:
    """The five stages of the detach sequence, as seen in ``ps -o pid,ppid,pgid,sid,tty``."""
    init = Proc("init", "init (or a subreaper)", "init", 1, 0, 1, 1, None, 20, 50)
    shell = Proc("shell", "bash (your shell)", "shell", 4000, 3990, 4000, 4000, "pts/0",
                 110, 160)

    def launcher(kind: str = "launcher", note: str = "") -> Proc:
        return Proc("launcher", "launcher: python app.py", kind, 4101, 4000, 4101, 4000,
                    "pts/0", 160, 270, parent="shell", note=note)

    terminal_session = "session 4000 (controlling terminal pts/0)"
    stages: dict[str, Svg] = {}

    stages["tree-0-start"] = _draw_tree(
        "Before open(): an ordinary foreground job",
        "The program is a process-group leader in the shell's session, tied to its terminal.",
        [init, shell, launcher()], [(terminal_session, ["shell", "launcher"])])

    child_in_terminal = Proc("child", "child", "child", 4102, 4101, 4101, 4000, "pts/0",
                             210, 380, parent="launcher",
                             note="not a group leader: may setsid()")
    stages["tree-1-first-fork"] = _draw_tree(
        "First fork: the child is not a process-group leader",
        "The launcher stays, waiting on the start-up pipe; SIGHUP is blocked across this fork.",
        [init, shell, launcher(note="waits for the report"), child_in_terminal],
        [(terminal_session, ["shell", "launcher", "child"])])

    leader = Proc("child", "child, session leader", "child", 4102, 4101, 4102, 4102, None,
                  210, 410, parent="launcher", note="lost the terminal")
    stages["tree-2-setsid"] = _draw_tree(
        "setsid(): a new session and process group, no terminal",
        "A session leader could still acquire a terminal by opening one: hence a second fork.",
        [init, shell, launcher(note="waits for the report"), leader],
        [(terminal_session, ["shell", "launcher"]), ("session 4102 (no terminal)", ["child"])])

    exited = Proc("child", "child: _exit(0)", "gone", 4102, 4101, 4102, 4102, None, 210, 410,
                  parent="launcher", note="zombie until the launcher reaps it")
    daemon = Proc("daemon", "daemon", "daemon", 4103, 1, 4102, 4102, None, 160, 540,
                  parent="init", note="not a leader: can never get a tty")
    stages["tree-3-second-fork"] = _draw_tree(
        "Second fork: the daemon is orphaned and adopted",
        "The intermediate child exits at once; the kernel re-parents the daemon to init "
        "(or the nearest subreaper).",
        [init, shell, launcher(note="waits for the report"), exited, daemon],
        [(terminal_session, ["shell", "launcher"]),
         ("session 4102 (no terminal)", ["child", "daemon"])])

    gone_launcher = launcher("gone", note="exited with the daemon's status")
    gone_launcher.label = "launcher: exit 0"
    ready = Proc("daemon", "daemon (pidfile: 4103)", "daemon", 4103, 1, 4102, 4102, None, 160,
                 410, parent="init", note="runs until SIGTERM")
    stages["tree-4-ready"] = _draw_tree(
        "After the report: only the daemon is left",
        "The launcher reaped the intermediate child, heard \"ready\" and exited 0; the shell "
        "prompt returns.",
        [init, shell, gone_launcher, ready],
        [(terminal_session, ["shell", "launcher"]), ("session 4102 (no terminal)", ["daemon"])])
    return stages


# --- the start-up handshake -----------------------------------------------------------------


def handshake() -> Svg:
    """The launcher/daemon start-up handshake (daemonctx.handshake) as a sequence diagram."""
    columns = {"shell": 80, "launcher": 270, "child": 510, "daemon": 720}
    # Each process's box is drawn where it comes into existence, its lifeline down to its end.
    lifelines = {
        "shell": ("shell", "shell", 50, 665),
        "launcher": ("launcher (4101)", "launcher", 50, 640),
        "child": ("child (4102)", "child", 168, 360),
        "daemon": ("daemon (4103)", "daemon", 298, 665),
    }
    svg = Svg(880, 900, "The start-up handshake between the launcher and the daemon")
    svg.text(20, 28, "The start-up handshake: the launcher exits only once the daemon reported",
             size=15, bold=True)
    for key, (label, kind, head, end) in lifelines.items():
        x = columns[key]
        fill, stroke = COLOURS[kind]
        svg.line(x, head + 32, x, end, colour=MUTED, dash="4 4", width=1.2)
        svg.rect(x - 70, head, 140, 32, fill=fill, stroke=stroke, width=2)
        svg.text(x, head + 21, label, anchor="middle", bold=True, size=12)

    def message(y: float, src: str, dst: str, text: str, *, dashed: bool = False,
                mono: bool = False, creates: bool = False) -> None:
        x1, x2 = columns[src], columns[dst]
        if creates:  # the arrow ends at the new process's box
            x2 -= 70
        svg.line(x1, y, x2 - (2 if x2 > x1 else -2), y, arrow=True,
                 dash="6 4" if dashed else None)
        svg.text((x1 + x2) / 2, y - 6, text, anchor="middle", size=12, mono=mono)

    def note(y: float, key: str, lines: list[str], *, width: float = 190) -> None:
        x = columns[key] - width / 2
        svg.rect(x, y, width, 18 * len(lines) + 8, fill="#fffbe6", stroke="#d4a72c",
                 radius=3, width=1)
        for i, line in enumerate(lines):
            svg.text(x + 8, y + 18 + 18 * i, line, size=11.5)

    message(105, "shell", "launcher", "fork + exec")
    note(115, "launcher", ["open(): check every option,", "steps 1-6, pipe (close-on-exec)"])
    message(184, "launcher", "child", "fork (SIGHUP blocked)", creates=True)
    svg.rect(columns["launcher"] - 5, 200, 10, 420, fill="#ddf4ff", stroke="#0969da", radius=2,
             width=1)
    svg.text(columns["launcher"] - 12, 260, "select() on the pipe,", anchor="end", size=11.5,
             italic=True, colour=MUTED)
    svg.text(columns["launcher"] - 12, 276, "at most startup_timeout", anchor="end", size=11.5,
             italic=True, colour=MUTED)
    note(214, "child", ["setsid()"], width=120)
    message(314, "child", "daemon", "fork", creates=True)
    message(345, "child", "launcher", "P 4103 (pid pipe)", dashed=True,
            mono=True)
    svg.text(columns["child"] + 12, 372, "_exit(0)", size=12, mono=True)
    svg.cross(columns["child"], 382)
    note(400, "daemon", ["signals reset, signal_map,", "close fds, stdio,",
                         "pidfile: flock + write pid"])
    note(476, "daemon", ["application start-up", "(with defer_ready=True)"])
    message(545, "daemon", "launcher", "R    then close the pipe", dashed=True, mono=True)
    note(560, "daemon", ["serving; READY=1 too", "if NOTIFY_SOCKET is set"])
    svg.text(columns["launcher"] + 12, 600, "waitpid(4102): reaped", size=12, mono=True)
    message(630, "launcher", "shell", "exit status 0")
    svg.cross(columns["launcher"], 640)

    # the other outcomes, instead of "R"
    box_top = 675
    svg.rect(20, box_top, 840, 205, fill="#fff5f5", stroke="#cf222e", dash="5 3", radius=6,
             width=1.2)
    svg.text(32, box_top + 22, "instead of R, the launcher may read:", bold=True, size=12.5,
             colour="#cf222e")
    rows = [
        ("E 1 PIDFileLockedError: pidfile … held by pid 4242",
         "prints the message on stderr, exits 1 (or the status given)"),
        ("X, then end of file", "the daemon exec'd another program: exit 0 (the CLI's start)"),
        ("end of file, no report", "the daemon died: exit 1 (or its own status, when "
                                   "reapable)"),
        ("nothing within startup_timeout", "sends SIGTERM to the daemon's pid, exits 1"),
    ]
    for i, (what, then) in enumerate(rows):
        y = box_top + 55 + 38 * i
        svg.text(40, y, what, mono=True, size=12)
        svg.text(430, y, then, size=12)
    return svg


# --- the modules -----------------------------------------------------------------------------

#: The layers of daemonctx, top to bottom: a module imports only from its own layer or below
#: (tests/test_architecture.py holds the code to this picture).
LAYERS = [
    ("entry points", [("cli", "the daemonctx command"),
                      ("runner", "python-daemon's DaemonRunner"),
                      ("__init__", "public names, lazily")]),
    ("the API", [("context", "DaemonContext, in order"),
                           ("supervisor/", "master, policy, rolling, worker"),
                           ("control", "find the holder, stop, signal"),
                           ("status", "LSB status, process tree")]),
    ("one job each", [("options", "options -> one frozen Plan"),
                      ("launcher", "the launching process; notify"),
                      ("handshake", "the start-up report's wire"),
                      ("steps", "one function per detach step"),
                      ("signals", "the signal map")]),
    ("primitives", [("pidfile", "flock pidfiles"), ("systemd", "sd_notify, LISTEN_FDS"),
                    ("_proc", "/proc readers"), ("_os", "OS primitives"),
                    ("_paths", "chroot path views"), ("errors", "exceptions")]),
]
LAYER_COLOURS = ["launcher", "daemon", "child", "shell"]
#: Modules not drawn, each in the layer of the module it serves.
COMPANIONS = {"__main__": "cli", "_notify_keeper": "launcher", "_pid1": "steps",
              "_signal_module": "_os"}


def architecture() -> Svg:
    """The modules in their layers; every import points down (or stays in its layer)."""
    box_w, box_h, gap, band_h, left = 188, 52, 12, 92, 140
    widest = max(len(modules) for _, modules in LAYERS)
    width = left + widest * (box_w + gap) + 20
    svg = Svg(width, 70 + len(LAYERS) * band_h + 10,
              "daemonctx's modules in layers: imports point down only")
    svg.text(20, 30, "daemonctx's modules: each layer imports only from itself and the "
                     "layers below", size=15, bold=True)
    for row, (title, modules) in enumerate(LAYERS):
        top = 55 + row * band_h
        fill, stroke = COLOURS[LAYER_COLOURS[row]]
        svg.text(20, top + box_h / 2 + 5, title, size=13, bold=True, colour=MUTED)
        for column, (name, job) in enumerate(modules):
            x = left + column * (box_w + gap)
            svg.rect(x, top, box_w, box_h, fill=fill, stroke=stroke)
            svg.text(x + 10, top + 21, name, mono=True, bold=True, size=13)
            svg.text(x + 10, top + 40, job, size=11, colour=MUTED)
        if row + 1 < len(LAYERS):
            svg.line(left - 20, top + box_h + 4, left - 20, top + band_h - 4, arrow=True)
    return svg


# --- main -----------------------------------------------------------------------------------


def drawings() -> dict[str, str]:
    """Every picture, by file name, as SVG text."""
    result = {f"{name}.svg": str(svg) for name, svg in process_trees().items()}
    result["handshake.svg"] = str(handshake())
    result["architecture.svg"] = str(architecture())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a committed SVG is out of date")
    args = parser.parse_args(argv)
    STATIC.mkdir(exist_ok=True)
    stale = []
    for name, text in drawings().items():
        path = STATIC / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("out of date (run python docs/diagrams.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
