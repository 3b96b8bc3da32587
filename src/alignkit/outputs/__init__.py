"""What a command may write: checked before any work, written atomically.

A command that writes refuses, before it loads anything, an output that

- is one of its inputs, or holds one (``merge runs/x/model --out runs/x`` would delete the adapter it reads);
- is a directory where a file goes, or a file where a directory goes;
- already exists and was not made by the same kind of command, unless ``--overwrite`` says so.

Writes go to a temp file (or directory) beside the output and are renamed over it in one step, so a crash or Ctrl-C
leaves the old output whole.
"""

from alignkit.outputs.atomic import finite, replace_dir, write_json_atomic, write_text_atomic
from alignkit.outputs.checks import (
    OWNER_FILE,
    check_output_dir,
    check_output_file,
    claim_dir,
    made_by,
    own_output_dir,
)

__all__ = [
    "OWNER_FILE", "check_output_dir", "check_output_file", "claim_dir", "finite", "made_by", "own_output_dir",
    "replace_dir", "write_json_atomic", "write_text_atomic",
]  # fmt: skip
