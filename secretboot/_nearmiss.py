"""Near misses: plain values that look like a reference someone meant to write.

A value that is not a reference starts the application with the value itself as
its secret. When that value is ``smm:/myapp/db`` or ``KMS:AQIC...``, the person
who wrote it almost certainly meant a reference. ``near_miss`` names such a value's
likely prefix. It is pure (no I/O, no settings), runs on every scanned variable,
and is linear in the value's length: it looks at a bounded head of the value, and
only once that head matches does it check the characters of the rest.

The reason it returns quotes at most the word typed before the first ``:`` or
``;`` (letters, ``-`` and ``_``, at most 20 characters, and close to a known prefix)
and never anything after it: the rest may be a secret.
"""

from __future__ import annotations

from secretboot._reference import (
    KMS_PREFIX,
    SEALED_PREFIX,
    SECRETS_MANAGER_PREFIX,
    SSM_PREFIX,
    is_reference,
)

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGITS = "0123456789"
_WORD_CHARS = frozenset(_LETTERS + "-_")
_MAX_WORD = 20
# What a value picks up around it when copied from a shell, a YAML file or a console.
_WRAPPERS = " \t\r\n\"'`"
_DYNAMIC_MARK = "{{resolve:"

# Words that mean a prefix, lower-cased and without "-" and "_": the prefixes in
# other cases or spellings, and abbreviations and slips too short for an edit
# distance to judge ("ms", "sms", "ssh" and "ssl" are one edit away from a prefix
# and are real words, so short words are listed, never guessed).
_WORDS = {
    "kms": KMS_PREFIX,
    "ksm": KMS_PREFIX,
    "mks": KMS_PREFIX,
    "skm": KMS_PREFIX,
    "smk": KMS_PREFIX,
    "kkms": KMS_PREFIX,
    "kmms": KMS_PREFIX,
    "kmss": KMS_PREFIX,
    "awskms": KMS_PREFIX,
    "ssm": SSM_PREFIX,
    "smm": SSM_PREFIX,
    "mss": SSM_PREFIX,
    "sssm": SSM_PREFIX,
    "ssmm": SSM_PREFIX,
    "awsssm": SSM_PREFIX,
    "ssmsecure": SSM_PREFIX,
    "ssmsecurestring": SSM_PREFIX,
    "ssmparameter": SSM_PREFIX,
    "sealed": SEALED_PREFIX,
    "seal": SEALED_PREFIX,
    "secretsmanager": SECRETS_MANAGER_PREFIX,
    "sm": SECRETS_MANAGER_PREFIX,
    "awssm": SECRETS_MANAGER_PREFIX,
    "awssecretsmanager": SECRETS_MANAGER_PREFIX,
}
# Longer words: a typo within this many edits (insert, delete, substitute, swap).
_FUZZY = (
    ("sealed", SEALED_PREFIX, 1),
    ("secretsmanager", SECRETS_MANAGER_PREFIX, 2),
    ("ssmsecure", SSM_PREFIX, 1),
)

# What may follow each prefix. A near miss must look like the rest of a reference,
# which keeps "scaled:2x", "sm:8080" or "sm:hello world" plain.
_BASE64ISH = frozenset(_LETTERS + _DIGITS + "+/=-_")  # the standard and URL-safe alphabets
_SSM_CHARS = frozenset(_LETTERS + _DIGITS + "_.-/:")  # names, ARNs and selectors
_SECRET_ID_CHARS = frozenset(_LETTERS + _DIGITS + "/_+=.@-:")  # names and ARNs
_NUMERIC = _DIGITS + ":."


def _looks_like_body(prefix: str, body: str) -> bool:
    if prefix in (KMS_PREFIX, SEALED_PREFIX):
        return len(body) >= 8 and set(body) <= _BASE64ISH
    # A name, not a port, a time or an address ("sm:8080", "smm:12:30").
    if prefix == SSM_PREFIX:
        return body[:1] not in ("", ":") and bool(body.strip(_NUMERIC)) and set(body) <= _SSM_CHARS
    secret_id = body.partition("#")[0]
    return bool(secret_id.strip(_NUMERIC)) and set(secret_id) <= _SECRET_ID_CHARS


def _distance(a: str, b: str) -> int:
    """Edit distance counting a swap of neighbours as one edit (optimal string alignment)."""
    older: list[int] = []
    above = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(above[j] + 1, row[j - 1] + 1, above[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], older[j - 2] + 1)
        older, above = above, row
    return above[-1]


def _intended(word: str) -> str | None:
    """The prefix ``word`` (letters, ``-`` and ``_``) probably stands for."""
    name = word.lower().replace("-", "").replace("_", "")
    if name in _WORDS:
        return _WORDS[name]
    for target, prefix, limit in _FUZZY:
        if abs(len(name) - len(target)) <= limit and _distance(name, target) <= limit:
            return prefix
    return None


def _word_end(value: str, start: int) -> int:
    """Where the run of letters, ``-`` and ``_`` from ``start`` ends (looks at most 21 characters)."""
    end = start
    while end < len(value) and end - start <= _MAX_WORD and value[end] in _WORD_CHARS:
        end += 1
    return end


def _misspelt_prefix(value: str) -> str | None:
    """``smm:/a``, ``KMS:...``, ``kms;...``, ``secrets-manager:...``."""
    end = _word_end(value, 0)
    if not 0 < end <= _MAX_WORD or value[0] not in _LETTERS or end == len(value) or value[end] not in ":;":
        return None
    word = value[:end]
    prefix = _intended(word)
    if prefix is None or not _looks_like_body(prefix, value[end + 1 :]):
        return None
    return f"looks like a misspelt reference: '{word}{value[end]}' (did you mean '{prefix}'?)"


def _misspelt_dynamic(value: str) -> str | None:
    """``{resolve:ssm:/a}}``, ``{{ resolve:ssm:/a}}``, ``{{resolv:...}}``, ``resolve:ssm:/a``."""
    start = 0
    while start < len(value) and start < 4 and value[start] in "{ ":
        start += 1
    end = start
    while end < len(value) and end - start <= 9 and value[end] in _LETTERS:
        end += 1
    word = value[start:end].lower()
    sep = end + (end < len(value) and value[end] == " ")
    if not 5 <= len(word) <= 9 or sep >= len(value) or value[sep] not in ":;":
        return None
    braces = value[:start].count("{")
    if word != "resolve" and (braces == 0 or _distance(word, "resolve") > 2):
        return None
    kind_start = sep + 1 + (sep + 1 < len(value) and value[sep + 1] == " ")
    kind_end = _word_end(value, kind_start)
    if kind_end >= len(value) or value[kind_end] not in ":;" or kind_end - kind_start > _MAX_WORD:
        return None
    if _intended(value[kind_start:kind_end]) not in (SSM_PREFIX, SECRETS_MANAGER_PREFIX):
        return None
    return f"looks like a misspelt reference: '{value[: sep + 1]}' (did you mean '{_DYNAMIC_MARK}'?)"


def near_miss(value: str) -> str | None:
    """Why ``value`` looks like a misspelt reference, or ``None`` when it does not.

    ``None`` for a reference (``is_reference``; a malformed one is already an error
    when it is parsed) and for a plain value. Otherwise a short reason naming the
    prefix probably meant, quoting at most the word typed before its ``:`` or ``;``.
    """
    if not isinstance(value, str):
        raise TypeError("value must be a str")
    if is_reference(value):
        return None
    inner = value.strip(_WRAPPERS)
    if inner != value and is_reference(inner):
        # Quotes or whitespace kept from a shell line, a YAML file or a console copy.
        for prefix in (KMS_PREFIX, SSM_PREFIX, SEALED_PREFIX, SECRETS_MANAGER_PREFIX):
            if inner.startswith(prefix):
                return f"looks like a '{prefix}' reference with quotes or whitespace around it"
        return "looks like KMS ciphertext with quotes or whitespace around it"
    return _misspelt_prefix(inner) or _misspelt_dynamic(inner)
