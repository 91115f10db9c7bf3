"""Phone numbers: the pattern proposing candidates and the check confirming them.

A phone number has no checksum; what tells one from an order number, a date or an amount is how it
is written, whether a numbering plan has it, and the words around it. The check weighs the three,
with libphonenumber (``phonenumbers``, Google's metadata of every plan) for the plans:

1. **Never**: fewer than 7 or more than 15 digits (E.164's most), unbalanced parentheses, a date
   or a date and time, a decimal or a count with thousands separators that no plan writes that
   way, the SSN or EIN layout, a year followed by a serial (``2023-799163``), glued to an identifier
   (``INV-555-0123``, ``user=5551234567``) or right after an identifier word ("order", "account",
   "customer", "IMEI", ...), a currency sign, or a card or SSN word.
2. **International** (``+``, ``(+44)``, ``+(370)``): a number of a length its country uses is
   enough: writing the country code is a phone number's own mark (in groups or named, another
   length too: a digit too many or too few, or a plan newer than the metadata). After ``00`` (which also starts
   zero-padded codes: UPC ``002566378388``, ZIP ``00645-5092``) the number must be valid, and
   bare digits not a barcode by their check digit.
3. **North American**: bare digits valid in the plan (US, Canada, the Caribbean), or eleven
   bare digits of a Chinese mobile number (``13812345678``: its own shape); or of the North
   American shape (area code and exchange 2-9) in a
   layout phone numbers are written in (``(415) 555-0100``, ``415-555-0100``, ``415.555.0100``,
   ``1 415 555 0100``, ``415/555-0100``), or a local number with a dash (``555-0123``); the
   dashed, dotted and parenthesised layouts whatever the digits (``(012) 345-6789``: forms and
   test data fill them with any). Bare digits and local numbers not after an identifier word in
   the same sentence ("placed order 6463879 from Lake Lisa, 431-8218").
4. **Other national numbers** (no country code), tried in :data:`REGIONS` (the plans of the
   languages Tollway's users write in; a plan is tried only when the digits have a length it
   uses): valid there and written in digit groups that plan's own format produces (``020 7946
   0958``, ``06 12 34 56 78``, ``0612 345 678``), or with the trunk prefix (``0``) and valid
   there (bare digits: 10 or 11 of them; shorter or longer ones are as often barcodes, routing
   or passport numbers), or a country code in parentheses without the plus (``(351) 912 345 678``).
5. **Named**: right after a phone word ("phone", "tel.", "mobile", "M:", "fax", "call me on",
   "WhatsApp", "Telefon", "tél.", a key's "phone_number", "contact_phone", ...): any number
   possible in one of those plans, in groups or not; a phone word further back in the same
   sentence (a table header, "numbers to try: a, b or c"), with no identifier word after it:
   possible in one of the plans and written in groups, with a trunk prefix or as ten bare digits.

The check reads only the text before a candidate (``CONTEXT`` characters), never after it, so a
stream judges a value the same way whatever the chunks it came in.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat

# Where a number written without its country code may be from: the US first, then the national
# plans of the languages Tollway's users write in, the largest first (a policy may narrow this).
REGIONS = ("US", "GB", "DE", "FR", "IT", "ES", "CA", "AU", "IN", "BR", "MX", "JP", "NL", "CH", "AT", "BE",
           "PL", "SE", "PT", "IE", "DK", "NO", "FI", "CZ", "HU", "RO", "GR", "TR", "RU", "UA", "IL", "CN",
           "KR", "ID", "TH", "VN", "ZA", "NZ", "SG", "PH")

# Spaces and dashes as word processors and other languages write them too: no-break and narrow
# no-break spaces, hyphens and en dashes (the check reads them as a space and a dash).
_SPACES = "\u00a0\u202f\u2009"
_DASHES = "\u2010\u2011\u2012\u2013\u2212"
_SPACED_DASH = re.compile(r" - ")
_NORMAL = str.maketrans(_SPACES + _DASHES, " " * len(_SPACES) + "-" * len(_DASHES))
# (An alternation, not a class: Hyperscan reads the pattern's UTF-8 bytes.)
_SEP = r"(?:[ .-]|/ ?| - |" + "|".join(_SPACES + _DASHES) + "| \u2013 )"  # and a spaced dash: 415 - 555 - 0100
_EXT = r"(?: ?(?:[xX]|[eE]xt\.?|EXT\.?|[eE]xtension) ?[0-9]{1,6})?"
_GROUP = r"(?:" + _SEP + r"?\(?(?:0\)|[0-9]{1,5}\)?)){1,7}" + _EXT + r"\b"
# Up to eight digit groups, any of them in parentheses, separated by a space, dot, dash or slash
# (or nothing), then an extension; first an international mark or nothing (at a word start), or
# the first group in parentheses. Two patterns, so that "(+1 415 555 0100)" is also a candidate
# from its "+" (each pattern reports its own leftmost start).
PATTERNS = (r"(?:\+|\+\(|\b)[0-9]{1,5}\)?" + _GROUP,
            r"\(\+?[0-9]{1,5}(?:[ -][0-9]{1,5})?\)" + _GROUP)

# A candidate cut from a longer run of digit groups ("0-85279-752" of an ISBN, "9676 5286" of a
# bank account "9676 5286 6134") is a piece of another value: a separator then a digit, or a
# space then three digits, right after it (a phone number followed by " 2 times" still counts).
NOT_FOLLOWED_BY = r"[-./\u2010-\u2013\u2212][0-9X]|[ \u00a0\u202f\u2009][0-9]{3}"

MIN_LENGTH = 7  # characters: a match shorter than the fewest digits a phone number has is no candidate

_NOT_DIGIT = re.compile(r"\D+")
_GROUPS = re.compile(r"\d+")
_EXTENSION = re.compile(r" ?(?:[xX]|[eE]xt\.?|EXT\.?|[eE]xtension) ?[0-9]+$")
# A number glued to a word before it ("INV-555-0123", "ORD-2025-564329", "#4471-2291", "id=555..."),
# or after Japan's postal mark (〒100-0001).
_GLUED = re.compile(r"(?:[A-Za-z0-9][-/_.:]|#|〒 ?|[A-Za-z0-9_]=\"?)$")
_IDENTIFIER_WORDS = (
    r"order|invoice|inv|ref|reference|ticket|case|part|sku|isbn|ean|upc|barcode|tracking|account|acct|routing|"
    r"iban|serial|badge|mrn|policy|claim|zip|postcode|postal code|version|pin|passcode|product|item|model|"
    r"transaction|txn|confirmation|booking|receipt|customer|client|user|member|employee|emp|uid|contract|"
    r"(?!(?-i:ID) \d{5}(?:-\d{4})?\b)id|"  # not Idaho's "ID 83702" in an address
    r"ein|itin|fein|npi|dl|gtin|asin|aba|cheque|check|catalog|catalogue|certificate|permit|document|"
    r"identification|vehicle|unit|house|apartment|apt|suite|street|building|bank|wallet|gift|loyalty|"
    r"membership|pnr|locator|lucky|winning|lottery|random|prime|magic|"
    r"licen[cs]e|vin|imei|imsi|iccid|meid|patient|student|record|file|batch|lot|build|release|container|"
    r"shipment|parcel|voucher|coupon|otp|sort code|bsb|swift|bic|tax|vat|ssn|passport|registration|reg|"
    r"plate|room|gate|flight|seat|session|request|report|page|figure|table|issn|doi|po|nhs|sin|nino|bsn|cpf|"
    r"cnpj|pesel|ahv|avs|dni|nie|nif|siret|siren|insurance|medicare|cost cent(?:re|er)|"
    r"(?<!area )(?<!country )(?<!dialling )(?<!dialing )code")  # not "area code (415) ..."
# An identifier word right before the number ("order 555-0123", "account no. 0123456789").
_IDENTIFIER_WORD = re.compile(r"\b(?:" + _IDENTIFIER_WORDS + r")s?\b", re.IGNORECASE)
# A list an identifier word opened: "Barcodes: 4006381333931, 0302147817023, ..."
_IDENTIFIER_LIST = re.compile(r"\b(?:" + _IDENTIFIER_WORDS + r")s?\b(?:\s*(?:number|no\.?|nr\.?|num|id|#|code)s?)?"
                              r"(?:\s+(?:is|was|are|were))?[\W\d]*$", re.IGNORECASE)
# Phone words: a label right before a number, or further back in the same sentence.
_WORDS = (r"phones?|telephones?|tel|tels|tele|tlf|tfn|ph|mobiles?|mob|cell|cellphone|cellular|handy|fax|faxes|"
          r"calls?|called|calling|dial|dialing|dial-in|ring|text|sms|whatsapp|signal|viber|hotline|helpline|"
          r"contact|contacts|contacto|contato|contatto|kontakt|reach|reached(?=\s+(?:at|on|via|by|under)\b)|"
          r"reachable|voicemail|numbers|landline|"
          r"switchboard|callback|txt|wechat|telegram|imessage|pager|beeper|toll-free|tollfree|freephone|"
          r"t[ée]l[ée]phone|t[ée]l|portable|telefon|telefonnummer|rufnummer|mobil|mobilnummer|telefono|"
          r"tel[ée]fono|telefone|celular|m[óo]vil|cellulare|telefoon|mobiel|puhelin|numer|telefonu|"
          r"телефон|тел|моб|電話|携帯|手机|电话|전화|휴대폰")
_NUMBER_WORDS = r"(?:my|your|his|her|our|their|new|old|direct|home|work|office|private|business|contact|phone)"
_AFTER_WORD = r"(?:[\s_-]*(?:number|no\.?|nr\.?|#))?(?:\s+(?:is|are|was|at|on|to|me|us|him|her|them|now|instead)){0,3}"
# Right before the number: a phone word ("phone:", "call me on", "my number is"), or a one-letter
# label of a signature ("T +44 ...", "M: ..."), or a connector ("on", "at", "or") with a phone
# word earlier in the text.
# A key's words too: "phone_number", "contact_phone", "mobileNumber".
# "number" alone too ("the number is", "Number:"): "order number", "card number" and the other
# identifiers' numbers are refused before a label is looked at.
_WORD_START = r"(?<!\d[ \t])(?:\b|(?<=_))"  # not after a count ("5 calls"); a key's word after "_" too
_LABEL = re.compile(r"(?:" + _WORD_START + r"(?:" + _WORDS + r")|\b" + _NUMBER_WORDS
                    + r"\s+(?:number|no\.?|nr\.?|#)|\bnumber)" + _AFTER_WORD + r"[^\w\n]{0,6}$", re.IGNORECASE)
_LETTER = re.compile(r"(?:^|[\s|(,;/])[TMFPCHWO]\.?:?[ \t]{0,3}$")
# A line's label in a signature or a contact card: "Home: ...", "Office: ...", "Direct: ..." (a colon).
_CARD_LABEL = re.compile(r"(?:^|[\s|(,;/])(?:home|work|office|direct|main|desk|personal|private|business|"
                         r"emergency|daytime|evening|after hours|out of hours|support|reception|front desk)"
                         r"(?: line| no\.?| #)?[ \t]*[:：][ \t]{0,3}$", re.IGNORECASE)
_CONNECTOR = re.compile(r"\b(?:on|at|or|and|to|is|via|under)[^\w\n]{0,6}$", re.IGNORECASE)
# A phone word anywhere (the SSN check reads it too: "social ..., phone 089832783").
PHONE_WORD = re.compile(_WORD_START + r"(?:" + _WORDS + r")(?:\b|(?=_))|\b" + _NUMBER_WORDS
                        + r"\s+(?:number|no\b|nr\b)", re.IGNORECASE)
_CARD_OR_SSN = re.compile(r"\b(?:card|visa|mastercard|amex|debit|credit|cc|pan|ssn|social security|"
                          r"social sec|tax id|tin|paid with|pay with|charged? to)\b", re.IGNORECASE)
_CURRENCY = re.compile(r"(?:[$€£¥₹₽₩]|\b(?:usd|eur|gbp|chf|jpy|inr|rs|cad|aud|sek|nok|dkk|pln|brl)\.?)\s?$",
                       re.IGNORECASE)
# A date (and maybe a time) at the start: 2024-03-15, 20240315, 15.03.2024, 03/15/2024, 15 03 2024.
_DATE = re.compile(r"^(?:(?:19|20)\d\d([-./ ]?)(?:0[1-9]|1[0-2])\1(?:0[1-9]|[12]\d|3[01])(?!\d)"
                   r"|(?:0?[1-9]|[12]\d|3[01])([-./ ])(?:0?[1-9]|[12]\d|3[01])\2(?:19|20)\d\d(?!\d)"
                   r"|(?:0?[1-9]|[12]\d|3[01])([-./])(?:0?[1-9]|[12]\d|3[01])\3\d\d(?!\d)"
                   r"|(?:19|20)\d\d,? \d\d?[.:]\d\d(?!\d))")
_YEAR_SERIAL = re.compile(r"(?:19|20)\d\d[-/]\d{3,}")
_DECIMAL = re.compile(r"\d+\.\d+")
_LEADING_ZERO = re.compile(r"0\d")
_SEPARATORS = frozenset(" .-/")
_THOUSANDS = re.compile(r"[1-9]\d{0,2}([ .])\d{3}(?:\1\d{3})*")
_SSN_SHAPE = re.compile(r"\d{3}-\d{2}-\d{4}")
_ZIP4 = re.compile(r"\d{5}-\d{4}")
_EIN_SHAPE = re.compile(r"[1-9]\d-\d{7}")  # a US employer identification number (12-3456789)
_INTERNATIONAL = re.compile(r"^(?:\+ ?|\(\+|\+\(|00(?=[1-9]))")
_PAREN_CC = re.compile(r"^\(([1-9]\d{0,2})\) ?(?=\d)")
_TRUNK_ZERO = re.compile(r"^\(?0(?!0)")
# North American: area code and exchange 2-9, in a layout phone numbers are written in.
_NANP = re.compile(r"^(?:\+?1[ .-]?|001[ .-]?)?(?:\([2-9]\d\d\) ?|[2-9]\d\d(?:[ .-]|/ ?))[2-9]\d\d[ .-]\d{4}$")
# The North American layouts with dashes, dots or the area code in parentheses are written for
# phone numbers alone, whatever the digits: forms, fixtures and test-data generators fill them with
# any ("(012) 345-6789", "555-010-1234"), and they name a number the writer meant as one.
_NANP_WRITTEN = re.compile(r"^(?:\+?1-|001-)?(?:\(\d{3}\) ?\d{3}-\d{4}|\d{3}-\d{3}-\d{4})$|^\d{3}\.\d{3}\.\d{4}$")
_CN_MOBILE = re.compile(r"^1[3-9]\d{9}$")
_NANP_LOCAL = re.compile(r"^[2-9]\d\d-\d{4}$")  # 555-0123: a local number, the exchange and the line
_NANP_GROUPS = re.compile(r"^(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}$")
_NANP_BARE = re.compile(r"^1?([2-9]\d\d[2-9]\d{6})$")


_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail",
          "fixed_line", "mobile")


@dataclass(frozen=True, slots=True)
class _Plan:
    """A region's numbering plan, as libphonenumber's metadata has it, for a quick first look."""

    region: str
    country_code: int
    trunk: str  # the national (trunk) prefix: "0", "1", "8", "06"; "" when there is none
    lengths: frozenset[int]  # of national significant numbers
    numbers: re.Pattern[str]  # every national significant number of a type the plan assigns

    def national(self, digits: str) -> str | None:
        """``digits`` (no country code) as a national significant number of this plan's length, or None."""
        national = digits[len(self.trunk):] if self.trunk and digits.startswith(self.trunk) else digits
        return national if len(national) in self.lengths else None

    def number(self, national: str) -> PhoneNumber:
        zeros = len(national) - len(national.lstrip("0"))
        return PhoneNumber(country_code=self.country_code, national_number=int(national),
                           italian_leading_zero=zeros > 0 or None, number_of_leading_zeros=zeros if zeros > 1 else None)


@functools.cache
def _plans(regions: tuple[str, ...]) -> tuple[_Plan, ...]:
    out = []
    for region in regions:
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if meta is None or meta.general_desc is None or meta.country_code is None:
            continue
        kinds = [getattr(meta, kind) for kind in _TYPES]
        patterns = [kind.national_number_pattern for kind in kinds if kind is not None and kind.national_number_pattern]
        out.append(_Plan(region, meta.country_code, meta.national_prefix or "",
                         frozenset(meta.general_desc.possible_length or ()),
                         re.compile("(?:" + "|".join(patterns) + ")") if patterns else re.compile(r"(?!)")))
    return tuple(out)


def _possible(digits: str, regions: tuple[str, ...]) -> bool:
    """Whether one of the plans has national numbers of this length (libphonenumber's "possible")."""
    return any(plan.national(digits) is not None for plan in _plans(regions))


def _candidates(digits: str, regions: tuple[str, ...]) -> Iterator[tuple[str, PhoneNumber]]:
    """(region, number) for each plan of ``regions``, in order, whose own patterns have ``digits``
    (no country code): one regular expression per plan, before libphonenumber looks closer."""
    for plan in _plans(regions):
        national = plan.national(digits)
        if national is not None and plan.numbers.fullmatch(national):
            yield plan.region, plan.number(national)


def _valid(digits: str, regions: tuple[str, ...]) -> bool:
    """Whether libphonenumber finds ``digits`` valid in one of the plans of ``regions``."""
    return any(phonenumbers.is_valid_number_for_region(number, region)
               for region, number in _candidates(digits, regions))


def _parse(text: str) -> PhoneNumber | None:
    try:
        return phonenumbers.parse(text, None)
    except NumberParseException:
        return None


def _grouped_as(text: str, number: PhoneNumber) -> bool:
    """Whether ``text`` is written as the number's own national format writes it: the same digits
    (the trunk prefix where the plan writes one) in the same groups, some maybe merged: ``020 7946
    0958`` for London, not ``0207 94 60958`` nor ``20 7946 0958``."""
    formatted = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    groups = _GROUPS.findall(text)
    if len(groups) < 2 or "".join(groups) != _NOT_DIGIT.sub("", formatted):
        return False
    cuts, total = set(), 0
    for group in _GROUPS.findall(formatted):
        total += len(group)
        cuts.add(total)
    total = 0
    for group in groups:
        total += len(group)
        if total not in cuts:
            return False
    return True


def judge(text: str, before: str, regions: tuple[str, ...] = REGIONS) -> str | None:
    """Why ``text`` (a candidate, ``before``: the text just before it) is a phone number, or None
    when it is not one (see the module docstring)."""
    text = _SPACED_DASH.sub("-", text.translate(_NORMAL))
    core = _EXTENSION.sub("", text)
    digits = _NOT_DIGIT.sub("", core)
    if (not 7 <= len(digits) <= 15 or core.count("(") != core.count(")") or _DATE.match(core)
            or _SSN_SHAPE.fullmatch(core) or _YEAR_SERIAL.fullmatch(core)):
        return None
    named = (_LABEL.search(before) is not None or _LETTER.search(before) is not None
             or _CARD_LABEL.search(before) is not None
             or (_CONNECTOR.search(before) is not None and PHONE_WORD.search(before) is not None))
    # The words before that refuse any number are read last, for a candidate the rest would take
    # (the regular expressions over the context cost more than the layout's).
    reason = _reason(text, core, digits, before, named, regions)
    if reason is None or (_GLUED.search(before) and not named) or _IDENTIFIER_LIST.search(before) \
            or _CURRENCY.search(before) or _CARD_OR_SSN.search(before, max(0, len(before) - 16)):
        return None
    return reason


def _reason(text: str, core: str, digits: str, before: str, named: bool, regions: tuple[str, ...]) -> str | None:
    size = len(digits)
    if _DECIMAL.fullmatch(core) and not _LEADING_ZERO.match(core) and not named:  # not 0800.124684
        return None
    grouped = len(_GROUPS.findall(core)) > 1

    international = _INTERNATIONAL.match(core)
    if international:
        number = _parse("+" + core[international.end():].replace("(0)", ""))
        # "+" is a phone number's own mark; "00" also starts zero-padded codes (UPC 002566378388,
        # ZIP 00645-5092), so a number after it must be one its country assigns.
        if number is not None and (phonenumbers.is_possible_number(number) if not core.startswith("00") else
                                   phonenumbers.is_valid_number(number) and (grouped or named or not _gtin(digits))):
            return "international"
        if not core.startswith("00"):
            # A length the plan does not list (a digit too many or too few, or a plan newer than
            # the metadata): still the country code's mark, when written in groups or named.
            if (number is not None and number.country_code is not None and (grouped or named) and size >= 8
                    and phonenumbers.region_code_for_country_code(number.country_code) != "ZZ"):
                return "international, a length its plan does not list"
            return None
    if (_ZIP4.fullmatch(core) or _EIN_SHAPE.fullmatch(core)) and not named:
        return None
    cc = _PAREN_CC.match(core)
    if cc and size - len(cc.group(1)) >= 8:
        number = _parse("+" + digits)
        if number is not None and phonenumbers.is_valid_number(number):
            return "country code in parentheses"
    if _NANP.match(core):
        return "north american layout"
    if _NANP_WRITTEN.match(core):
        return "north american layout, any digits"
    if _NANP_LOCAL.match(core) and not _identified(before):
        return "north american local number"
    # Bare, or in the plan's groups (3, 3, 4) whatever the exchange's first digit: not any ten
    # digits in groups (84-529-9629-2 is an ISBN)
    bare = _NANP_BARE.match(digits) if not grouped or _NANP_GROUPS.match(core) else None
    if bare and not _identified(before) and phonenumbers.is_valid_number(
            PhoneNumber(country_code=1, national_number=int(bare.group(1)))):
        return "valid in the North American plan"  # the US, Canada, the Caribbean
    if not grouped and _CN_MOBILE.match(digits) and phonenumbers.number_type(
            PhoneNumber(country_code=86, national_number=int(digits))) == phonenumbers.PhoneNumberType.MOBILE:
        return "a mobile number of China's plan"  # eleven bare digits from 13 to 19: its own shape
    # 209.847.832, 8 336 817: a count, unless a phone word names it or an extension follows
    extension = len(core) < len(text)
    thousands = _THOUSANDS.fullmatch(core) is not None and not extension
    if thousands and not named:
        return None
    trunk = _TRUNK_ZERO.match(core) is not None
    if grouped and core[-2] in _SEPARATORS and not named:  # ISBN 0-227-47180-6: no plan ends in one digit
        return None
    if grouped:  # the plan's own groups first (formatting is cheaper than validating), then valid
        for region, number in _candidates(digits, regions):
            if _grouped_as(core, number) and phonenumbers.is_valid_number_for_region(number, region):
                return f"valid in {region}, in its groups"
    # Bare digits with a leading zero: 10 or 11 of them (the national lengths most plans with a
    # trunk prefix use); 8, 9, 12 and 13 are as often barcodes (EAN-8, UPC-A, EAN-13), routing or
    # passport numbers.
    if trunk and (grouped or 10 <= size <= 11) and _valid(digits, regions):
        return "valid with its trunk prefix"
    if named and _possible(digits, regions):
        return "named"
    if extension and _possible(digits, regions):
        return "with an extension"
    # Ten bare digits whatever the area code: test data fills "##########" with any digit.
    if (grouped or trunk or size == 10 or _NANP_BARE.match(digits)) and (named or _near(before)) \
            and _possible(digits, regions):
        return "near a phone word"
    return None


def _gtin(digits: str) -> bool:
    """Whether ``digits`` are a barcode (EAN-8, UPC-A, EAN-13, GTIN-14) by their check digit."""
    if len(digits) not in (8, 12, 13, 14):
        return False
    total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(reversed(digits[:-1]), 1))
    return (10 - total % 10) % 10 == int(digits[-1])


def _near(before: str) -> bool:
    """A phone word earlier in the same sentence or line, with no identifier word after it."""
    words = list(PHONE_WORD.finditer(before))
    if not words:
        return False
    rest = before[words[-1].end():]
    return not _SENTENCE_END.search(rest) and not _IDENTIFIER_WORD.search(rest)


_SENTENCE_END = re.compile(r"[.!?]\s|\n\s*\n")


def _identified(before: str) -> bool:
    """An identifier word earlier in the same sentence, with no phone word after it: what a bare
    or local number with no other mark of a phone number is more likely to be ("placed order 6463879
    from Lake Lisa, 431-8218", "Bank details for Jo: 110365596 / 4487766354")."""
    words = list(_IDENTIFIER_WORD.finditer(before))
    if not words:
        return False
    rest = before[words[-1].end():]
    return not _SENTENCE_END.search(rest) and PHONE_WORD.search(rest) is None


def check(text: str, before: str) -> bool:
    return judge(text, before) is not None
