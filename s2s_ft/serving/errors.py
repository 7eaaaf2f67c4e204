"""What every API of the server refuses with, before each API puts it in its own error shape: ``RequestError`` (an
HTTP status, a one-line reason naming what to change, a short kind) and the JSON type checks of request fields."""
import json
import math
import re
from typing import Any, Optional


class RequestError(Exception):
    """A request the server refuses: HTTP ``status``, a one-line reason naming what to change, and a short
    ``error_type`` for programs (our API's names; TGI's and OpenAI's modules map them to theirs); ``retry_after``
    (seconds) for the answers that say when to come back; ``param``: the request field at fault, where one is."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request",
                 retry_after: Optional[int] = None, param: Optional[str] = None):
        super().__init__(one_line(message))
        self.status, self.error_type, self.retry_after, self.param = status, error_type, retry_after, param


def one_line(message) -> str:
    return " ".join(str(message).split())


def option_message(message) -> str:
    """A flag check's message in the words of a JSON request (``--top_k`` -> ``top_k``)."""
    return one_line(re.sub(r"--(\w+)", r"\1", str(message)))


def invalid(message: str, param: Optional[str] = None) -> RequestError:
    """422: a field the request got wrong."""
    return RequestError(422, message, "invalid_request", param=param)


def check_type(name: str, value: Any, wanted: type):
    """``value`` if it is a JSON value of type ``wanted`` (an int where a float is wanted); else RequestError 422."""
    if wanted is bool:
        ok = isinstance(value, bool)
    elif wanted is int:
        # Python's json reads 1e999 as inf and any digit string as an int: bound ints to what torch can index with
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**62
    elif wanted is float:
        try:  # a JSON integer too large for a float overflows here
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        except OverflowError:
            ok = False
    else:
        ok = isinstance(value, str)
    if not ok:
        names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
        raise invalid(f"{name} must be {names[wanted]}, got {json.dumps(value)[:40]}", name)
    return float(value) if wanted is float else value


def parse_json_object(body: bytes, shape: str) -> dict:
    """The body as a JSON object; RequestError 400 (``shape`` says what an object of this API holds) if it is not."""
    try:
        request = json.loads(body)
    except ValueError as error:
        raise RequestError(400, f"the body is not JSON: {one_line(error)}", "invalid_json") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise RequestError(400, "the body nests too deeply to be a request", "invalid_json") from None
    if not isinstance(request, dict):
        raise RequestError(400, f"the body must be a JSON object: {shape}", "invalid_json")
    return request
