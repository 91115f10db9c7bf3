"""The ``tollway`` command's own mistakes: one line on stderr, status 2, pointing at the right ``--help``."""

from __future__ import annotations

import pytest

from ext_proc.cli import main


@pytest.mark.parametrize(("argv", "said"), [
    (["keys", "create", "--team", "search", "--owner", "x"],
     "tollway keys create: unrecognized arguments: --owner x (see `tollway keys create --help`)"),
    (["scan", "--bogus"], "tollway scan: unrecognized arguments: --bogus (see `tollway scan --help`)"),
    (["policy", "check", "p.yaml", "--fast"],
     "tollway policy check: unrecognized arguments: --fast (see `tollway policy check --help`)"),
    (["--bogus", "scan"], "tollway: unrecognized arguments: --bogus (see `tollway --help`)"),
    (["keys", "create"],  # (as argparse said it already: the subcommand's own parser)
     "tollway keys create: the following arguments are required: --team (see `tollway keys create --help`)"),
])
def test_an_unknown_option_points_at_its_subcommands_help(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                          said: str) -> None:
    with pytest.raises(SystemExit) as failed:
        main(argv)
    printed = capsys.readouterr()
    assert failed.value.code == 2 and printed.out == ""
    assert printed.err == said + "\n"
