"""Write TOML: the few value types the gateway's own config files hold (tables of scalars and lists).

The standard library reads TOML (tomllib) but does not write it; provisioning writes device.toml
and the loopback harness writes whole deployments, so both use this.
"""

from __future__ import annotations


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def render_toml(tables: dict[str, dict[str, object]]) -> str:
    """One ``[table]`` per key of ``tables``, each followed by its ``key = value`` lines."""
    out = []
    for table, keys in tables.items():
        out.append(f"[{table}]")
        out += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
        out.append("")
    return "\n".join(out)
