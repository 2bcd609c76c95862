"""What the programs print for bad input, read back in tests."""

import pytest

from ncl_jax import cli


def one_error_line(capsys, fn) -> str:
    """The one `error:` line (exit status 2) that cli.run_cli prints for `fn`'s input error."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(fn)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]
