"""Kubernetes resource quantities (``500m``, ``1.5``, ``.5``, ``1Gi``, ``1e9``, ``2Ei``), exactly.

The API server's grammar (k8s.io/apimachinery ``resource.Quantity``)::

    quantity ::= signedNumber suffix
    suffix   ::= binarySI | decimalExponent | decimalSI
    binarySI ::= Ki | Mi | Gi | Ti | Pi | Ei
    decimalSI ::= n | u | m | "" | k | M | G | T | P | E
    decimalExponent ::= e signedNumber | E signedNumber   (an integer)
    number   ::= digits | digits.digits | digits. | .digits

One parser for CPU and memory alike: the value is a :class:`~fractions.Fraction`, so ``1000m`` and
``1``, ``1Gi`` and ``1073741824`` are equal, as they are to the kubelet deciding a pod's QoS class.
"""

from __future__ import annotations

import re
from fractions import Fraction

_QUANTITY = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?")
_SUFFIX = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "k": Fraction(10**3),
           "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12), "P": Fraction(10**15),
           "E": Fraction(10**18), "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30),
           "Ti": Fraction(2**40), "Pi": Fraction(2**50), "Ei": Fraction(2**60)}
_LONGEST = 64  # characters: no resource quantity is longer; a longer text (or exponent) is no quantity here
_EXPONENT = 100


def quantity(text: str) -> Fraction | None:
    """The value of a Kubernetes quantity (in its base unit: cores, bytes); None if ``text`` is none."""
    match = _QUANTITY.fullmatch(text) if len(text) <= _LONGEST else None
    if match is None:
        return None
    sign, whole, fraction, exponent, suffix = match.groups()
    if not whole and not fraction:  # "", ".", "e3", "Mi"
        return None
    value = int(whole or "0") + Fraction(int(fraction or "0"), 10 ** len(fraction or ""))
    if exponent is not None:
        power = int(exponent[1:])
        if abs(power) > _EXPONENT:
            return None
        value *= Fraction(10) ** power
    elif suffix is not None:
        value *= _SUFFIX[suffix]
    return -value if sign == "-" else value
