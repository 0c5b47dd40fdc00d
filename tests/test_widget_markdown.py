"""widget.js builds the Markdown of bot replies with DOM APIs only (no browser needed).

The widget shows model and knowledge-base text; a single ``el.innerHTML = text`` would let a
reply carrying ``<img onerror>`` run script on the customer's page. So the widget's *code* must
not mention any API that parses a string as HTML. Comments may (the file's header explains the
rule), so they are removed first by a small JavaScript lexer that knows strings, template
literals and regular-expression literals: a "//" inside "https://..." or a "/*" inside a regex
is not a comment, and treating it as one could hide a real ``innerHTML`` after it.

The rendering itself (bold, lists, links, markup shown as text) is tested in a real browser in
tests/test_web_browser.py.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

WIDGET = Path(__file__).resolve().parent.parent / "web" / "static" / "widget.js"

# The four the widget must never use, and their rarer cousins that parse HTML just the same.
FORBIDDEN = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
             "createContextualFragment", "parseFromString", "setHTMLUnsafe", "srcdoc")

# After one of these a "/" starts a regular expression, not a division.
_REGEX_AFTER_CHARS = set("(,=:[!&|?{};+-*%<>~^")
_REGEX_AFTER_WORDS = {"return", "typeof", "case", "do", "else", "in", "of", "new", "delete", "void",
                      "throw", "instanceof", "yield", "await"}


def strip_comments(src: str) -> str:
    """``src`` with every comment replaced by a space (newlines kept, so line numbers hold).

    Strings, template literals and regex literals are copied as they are: they are code that
    runs, and a forbidden name in a string (``el["innerHTML"]``) counts.
    """
    out: list[str] = []
    i, n = 0, len(src)
    last_sig = ""  # the last significant code character or word, to tell a regex from a division

    def copy_quoted(start: int, quote: str) -> int:
        j = start + 1
        while j < n and src[j] != quote:
            if src[j] == "\\":
                j += 1
            elif src[j] == "\n" and quote != "`":
                break  # an unterminated string ends at the line (a syntax error in real JS)
            j += 1
        return min(j + 1, n)

    while i < n:
        c, nxt = src[i], src[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            end = src.find("\n", i)
            end = n if end < 0 else end
            out.append(" ")
            i = end
        elif c == "/" and nxt == "*":
            end = src.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(" " + "\n" * src.count("\n", i, end))
            i = end
        elif c in "'\"`":
            end = copy_quoted(i, c)
            out.append(src[i:end])
            last_sig, i = c, end
        elif c == "/" and (last_sig == "" or last_sig in _REGEX_AFTER_CHARS or last_sig in _REGEX_AFTER_WORDS):
            j, in_class = i + 1, False
            while j < n and src[j] != "\n":
                if src[j] == "\\":
                    j += 1
                elif src[j] == "[":
                    in_class = True
                elif src[j] == "]":
                    in_class = False
                elif src[j] == "/" and not in_class:
                    break
                j += 1
            j += 1
            while j < n and (src[j].isalnum() or src[j] == "_"):
                j += 1  # flags
            out.append(src[i:j])
            last_sig, i = ")", j  # after a regex literal a "/" divides
        elif c.isalnum() or c in "_$":
            m = re.compile(r"[\w$]+").match(src, i)
            out.append(m.group())
            last_sig, i = m.group(), m.end()
        else:
            out.append(c)
            if not c.isspace():
                last_sig = c
            i += 1
    return "".join(out)


@pytest.mark.parametrize("snippet, kept, removed", [
    ("a.innerHTML = x; // innerHTML\n", "a.innerHTML", "// innerHTML"),
    ("a.textContent = x; /* outerHTML\n insertAdjacentHTML */ b();", "b()", "outerHTML"),
    ('var u = "https://x.example/"; a.innerHTML = u;', "a.innerHTML", None),
    ("var u = 'http://x'; /* ok */ document.write(u);", "document.write", "ok"),
    ("var re = /\\/\\*/g; a.outerHTML = 1; /* c */", "a.outerHTML", "/* c */"),
    ("var re = /[/*]/; a.insertAdjacentHTML('x', y); // */", "insertAdjacentHTML", "// */"),
    ("var s = `//`; a.innerHTML = s;", "a.innerHTML", None),
    ('a["inner" + "HTML"]; b["innerHTML"] = c;', 'b["innerHTML"]', None),
    ("x = a / b; c.innerHTML = d / e; // f", "c.innerHTML = d / e", "// f"),
    ("return /\\/\\//.test(u) && a.outerHTML; // g", "a.outerHTML", "// g"),
])
def test_comments_go_and_code_strings_and_regexes_stay(snippet, kept, removed):
    code = strip_comments(snippet)
    assert kept in code
    if removed:
        assert removed not in code


def test_line_numbers_survive_comment_removal():
    src = "a();\n/* one\ntwo */\nb.innerHTML = 1;\n"
    assert strip_comments(src).splitlines()[3] == "b.innerHTML = 1;"


def test_widget_js_never_parses_strings_as_html():
    src = WIDGET.read_text(encoding="utf-8")
    code = strip_comments(src)
    # The lexer kept the code (it did not mistake the file for one long comment or string).
    for used in ("document.createElement(", "createElementNS(", "textContent", "setAttribute(", "renderMarkdown("):
        assert used in code, used
    found = [
        f"line {n}: {name}: {line.strip()}"
        for n, line in enumerate(code.splitlines(), start=1)
        for name in FORBIDDEN if name.lower() in line.lower()
    ]
    assert not found, "widget.js must build DOM nodes instead of parsing HTML:\n" + "\n".join(found)
