"""The one way tests run the command line as a user would: `python -m core ARGS` in a subprocess."""

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()


def cli_env(**extra) -> dict:
    """The environment for a CLI subprocess: this one, one torch thread (steady on busy machines), plus `extra`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("BNFOLD_DEBUG", "PYTHONUNBUFFERED"):  # output buffered as a user's is
        env.pop(name, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(*args, env=None, umask: int = -1, timeout: float = 300, prelude: str | None = None, cwd=None) -> Result:
    """Run `python -m core ARGS` (or, with `prelude`, that Python code and then the CLI) and return what it did.

    `prelude` runs in the child before the CLI, e.g. to make os.fsync fail as on a full disk.
    """
    args = [str(a) for a in args]
    if prelude is None:
        command = [sys.executable, "-m", "core", *args]
    else:
        then_run = "import sys\nfrom core.app.cli import main\nsys.exit(main(sys.argv[1:]))"
        command = [sys.executable, "-c", f"{prelude}\n{then_run}", *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=env or cli_env(), umask=umask, timeout=timeout,
                          cwd=cwd, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, *fragments: str, code: int = 2) -> str:
    """The run failed with `code` and exactly one stderr line, `bnfold...error: ...`, holding every fragment."""
    assert result.code == code, (result.code, result.err)
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert line.startswith("bnfold") and "error:" in line, line
    assert "Traceback" not in result.err and "\x1b" not in result.err and "[Errno" not in line, line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def run_main(*args) -> Result:
    """Run the CLI's main() in this process (fast: torch is already imported), capturing what it prints."""
    from core.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())
