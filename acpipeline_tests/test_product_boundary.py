"""The product is the package minus its tools: the demo (acpipeline/demo) and the benchmarks
(acpipeline/bench) use the product, never the other way round. Their commands reach the command line
through an entry point group, which the installed package registers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "acpipeline"
TOOLS = ("acpipeline.demo", "acpipeline.bench")


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_product_module_imports_the_demo_or_the_benchmarks():
    tools = ("demo", "bench", "localpds")  # localpds: the reference PDS the demo and the tests start
    product = [path for path in PACKAGE.rglob("*.py") if path.relative_to(PACKAGE).parts[0] not in tools]
    assert len(product) > 60, len(product)
    found = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imported(path) if n.startswith(TOOLS))
        for path in product
    }
    assert not {path: names for path, names in found.items() if names}


def test_the_code_location_loads_without_them():
    probe = (
        "import sys, acpipeline.definitions\n"
        f"print(sorted(m for m in sys.modules if m.startswith({TOOLS!r})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_the_command_line_gets_the_tools_commands_through_their_entry_points():
    """`acpipeline demo` and `acpipeline bench` are there, and building the parser loads neither the dataset
    builder, the demo world nor a benchmark: only the small modules that register the commands."""
    probe = (
        "import sys\n"
        "from acpipeline.cli.parser import build_parser\n"
        "parser = build_parser()\n"
        "print(parser.parse_args(['demo', 'status']).func.__module__)\n"
        "print(parser.parse_args(['bench', '--platform']).func.__module__)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({TOOLS!r})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    demo, bench, loaded = done.stdout.strip().splitlines()
    assert (demo, bench) == ("acpipeline.demo.command", "acpipeline.bench.command")
    assert loaded == str(
        ["acpipeline.bench", "acpipeline.bench.command", "acpipeline.demo", "acpipeline.demo.command"]
    )
