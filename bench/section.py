"""Replaces one marked section of BENCHMARKS.md (shared by the report scripts)."""
import os


def replace(name, body, path="BENCHMARKS.md"):
    """Puts body between `<!-- name:begin -->` and `<!-- name:end -->`; a
    file without both markers is left alone."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(path).read() if os.path.exists(path) else ""
    if begin in text and end in text:
        text = text[: text.index(begin) + len(begin)] + "\n" + body + "\n" + text[text.index(end):]
        open(path, "w").write(text)
