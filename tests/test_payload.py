import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zart_ref import PayloadError
from zart_ref.payload import decode, encode, parse_json_argument

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text().filter(lambda s: "\x00" not in s)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner) | st.dictionaries(st.text().filter(lambda s: "\x00" not in s), inner)
    ),
    max_leaves=20,
)


@given(json_values)
def test_every_json_value_round_trips_exactly(value: object) -> None:
    assert decode(encode(value)) == value


def test_big_integers_and_non_bmp_text_stay_exact() -> None:
    value = {"big": 2**63 + 1, "bigger": -(2**100), "emoji": "🦄 𝄞", "nested": [{"a": [1, 2]}]}
    assert decode(encode(value)) == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"a": [1, float("nan")]}, "payload['a'][1] is nan"),
        ({"x": float("inf")}, "payload['x'] is inf"),
        ({"s": "ab\x00c"}, "payload['s'] contains a NUL character"),
        ({"when": datetime(2026, 1, 1)}, "naive datetime"),
        ({"when": datetime(2026, 1, 1, tzinfo=UTC)}, "Store value.isoformat()"),
        ({1: "int key"}, "JSON object keys must be strings"),
        ({"obj": object()}, "is a object, which is not JSON"),
    ],
)
def test_values_that_would_not_round_trip_are_rejected_with_their_path(
    value: object, fragment: str
) -> None:
    with pytest.raises(PayloadError, match=re.escape(fragment)):
        encode(value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{bad", "line 1 column 2"),
        ("NaN", "NaN"),
        ('{"a": Infinity}', "Infinity"),
        ('"\\u0000"', "NUL"),
    ],
)
def test_cli_json_errors_say_where(text: str, fragment: str) -> None:
    with pytest.raises(PayloadError, match=fragment):
        parse_json_argument(text, what="--data")
