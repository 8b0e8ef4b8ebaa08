"""The wallet's ledger audit run as an operator runs it: a process of its own."""

import asyncio
import os
import sys


async def run_audit(database_url: str) -> tuple[int, str]:
    """Run `python -m services.wallet.audit` against `database_url` (the read-only role
    is enough); returns its exit code and its report, printed wide enough to read one
    check a line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.wallet.audit",
        env={**os.environ, "DATABASE_URL": database_url, "COLUMNS": "240"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()
