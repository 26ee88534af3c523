"""Kubernetes resource quantities (``500m``, ``1Gi``, ``1G``, ``2e3``), so limits can be compared
with requests the way the API server compares them."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIX = {
    "": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$")


def parse_quantity(value: object) -> Decimal | None:
    """The quantity as a number, or None when it is not one.

    >>> [str(parse_quantity(q)) for q in ("500m", "1Gi", "1G", "2e3", 4)]
    ['0.500', '1073741824', '1000000000', '2E+3', '4']
    """
    if isinstance(value, bool) or value is None:
        return None
    m = _QUANTITY.match(str(value).strip())
    if not m:
        return None
    number, exponent, suffix = m.groups()
    try:
        if exponent:
            return Decimal(number + exponent)
        return Decimal(number) * _SUFFIX[suffix or ""]
    except InvalidOperation:
        return None
