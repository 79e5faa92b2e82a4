"""The load of the rolling-update experiment and its verdict: hey's
summary parsed, its errors sorted into those whose outcome the client
cannot know and those it can, and the rule the counts must meet."""

import re


ERROR_KINDS = (
    ("refused", re.compile(r"connection refused")),
    ("reset", re.compile(r"connection reset")),
    ("timeout", re.compile(r"Timeout|timeout|deadline exceeded")),
    # The connection closed before a response: what a client of HAProxy
    # (or of kube-proxy) sees when the backend refused or vanished.
    ("closed", re.compile(r"EOF|server closed|broken pipe")),
)


def error_kind(message):
    for kind, rx in ERROR_KINDS:
        if rx.search(message):
            return kind
    return "other"


# hey's errors that happened before the request was sent: the connection
# to the Service was never made. Every other error (EOF, a reset, a timeout
# awaiting the response, a closed idle connection) came after the request
# may have been written, with no response read: Redis may hold it.
UNSENT = re.compile(r"\bdial tcp\b|connect: ")


def unknown_outcome(message):
    return not UNSENT.search(message)


def count_unknown(errors):
    """Requests whose outcome the client cannot know, from hey's errors."""
    return sum(n for msg, n in errors.items() if unknown_outcome(msg))


# The verdict's rules, as the JSON result and the report state them.
STRICT_RULE = "lost == 0 and extra == 0 and failed == 0"
KILLED_RULE = "lost == 0 and extra <= unknown"
# --idempotent-retries: every key retried until answered, whatever died.
KEYED_RULE = "lost == 0 and extra == 0 and unknown == 0"


def verdict(ok, failed, counter, unknown, killed):
    """(rule, lost, extra, problems) of the counts. Where a replica was
    SIGKILLed, requests it held broke with no response (unknown, which
    Redis may hold): nothing may be lost, and at most those may count
    more. Elsewhere the counter equals the 200s and nothing failed."""
    lost, extra = max(0, ok - counter), max(0, counter - ok)
    rule = KILLED_RULE if killed else STRICT_RULE
    problems = []
    if failed and not killed:
        problems.append(f"{failed} requests failed")
    if lost:
        problems.append(f"{lost} increments lost")
    if extra and not killed:
        problems.append(f"{extra} increments counted twice")
    elif extra > unknown:
        problems.append(f"{extra} increments counted more than the "
                        f"{unknown} requests of unknown outcome")
    return rule, lost, extra, problems


def parse_hey(text):
    """Status codes and errors from hey's summary (its CSV output lists
    successful requests only)."""
    statuses, errors = {}, {}
    section = None
    for line in text.splitlines():
        if line.startswith("Status code distribution:"):
            section = "status"
            continue
        if line.startswith("Error distribution:"):
            section = "error"
            continue
        if not line.startswith(" "):
            section = None if line.strip() else section
            continue
        m = re.match(r"\s*\[(\d+)\]\s+(.*)$", line)
        if not m:
            continue
        if section == "status":
            n = re.match(r"(\d+) responses", m.group(2))
            if n:
                statuses[int(m.group(1))] = int(n.group(1))
        elif section == "error":
            errors[m.group(2).strip()] = int(m.group(1))
    rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
    total = re.search(r"Total:\s*([\d.]+) secs", text)
    return {
        "statuses": statuses, "errors": errors,
        "rps": float(rps.group(1)) if rps else None,
        "total_s": float(total.group(1)) if total else None,
    }


def keyed_verdict(answered, counter, unanswered):
    """(rule, lost, extra, problems) of a load whose every request carried
    an Idempotency-Key of its own and was retried until answered 200
    (--idempotent-retries): no outcome is left unknown, so whatever was
    killed the counter equals the keys answered, exactly."""
    lost, extra = max(0, answered - counter), max(0, counter - answered)
    problems = []
    if unanswered:
        problems.append(f"{unanswered} keys never answered 200 (unknown)")
    if lost:
        problems.append(f"{lost} increments lost")
    if extra:
        problems.append(f"{extra} increments counted twice")
    return KEYED_RULE, lost, extra, problems
