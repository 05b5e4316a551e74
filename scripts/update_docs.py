"""Regenerate the generated tables of docs/operations.md (settings, metrics) from the code.

    PYTHONPATH=src python scripts/update_docs.py

tests/test_config_file.py fails when the committed page differs from what this writes.
"""

from __future__ import annotations

from pathlib import Path

from tether.cli import serve
from tether.configfile import generated

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"

if __name__ == "__main__":
    DOC.write_text(generated(DOC.read_text(), serve))
    print(f"updated {DOC}")
