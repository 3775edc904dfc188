"""Every error code a node can answer a client with is documented: in README's table and
in the OpenAPI document's enum, which lists nothing else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ringkv.node
from ringkv.node.config import Settings
from ringkv.node.openapi import document

NODE = Path(ringkv.node.__file__).parent
README = Path(__file__).resolve().parents[2] / "README.md"
# The modules that answer clients (the peer protocol's codes in transport.py never reach one).
CLIENT_FACING = ("api.py", "httpserver.py")


def emitted_codes() -> set[str]:
    """Codes in error_response(...) / ApiError(...) calls, the status -> code table, and
    `"code": ...` literals of the client-facing modules."""
    codes: set[str] = set()
    for name in CLIENT_FACING:
        for node in ast.walk(ast.parse((NODE / name).read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("error_response", "ApiError") and len(node.args) > 1):
                codes.update(_strings(node.args[1]))
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    # `{"code": ...}` bodies, and the status -> code table (int keys)
                    if isinstance(key, ast.Constant) and (key.value == "code" or isinstance(key.value, int)):
                        codes.update(_strings(value))
    return codes


def _strings(node: ast.AST) -> set[str]:
    """The string constants a code expression can evaluate to (`a if c else b` included)."""
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_the_scan_finds_the_codes_it_should() -> None:
    codes = emitted_codes()
    assert {"bad_request", "not_found", "quorum_unavailable", "too_many_connections",
            "expectation_failed", "internal"} <= codes, codes
    assert all(re.fullmatch(r"[a-z_]+", code) for code in codes), codes


def test_openapi_enum_is_exactly_the_codes_answered() -> None:
    spec = document(Settings(node_name="n"))
    enum = spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert set(enum) == emitted_codes()


def test_readme_lists_every_code() -> None:
    text = README.read_text()
    table = text[text.index("- Errors are JSON"):]
    missing = sorted(code for code in emitted_codes() if f"| `{code}` |" not in table)
    assert not missing, f"README's error table lacks {missing}"
