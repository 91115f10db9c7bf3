"""The PII development set: labelled texts generated with Faker, for tuning the detectors.

Why a set of our own: the evaluation set (presidio-research's synthetic texts, read by
``bench/eval.py``) measures the detectors, and a detector revised until that set's figures look
good is tuned on it, whatever its author meant. Rules are tried on this set instead, and the
evaluation set is run once the rules are settled.

What it holds (``generate(seed)``, deterministic for a seed and a Faker version): sentences in the
tone of support tickets, CRM notes, chat messages and logs, each with zero to three labelled
values (email, phone in 14 locales and their usual layouts, US SSN, payment card, IBAN, IPv4/IPv6)
among unlabelled noise Faker also writes (names, street addresses with ZIP codes, company names,
dates), and hard negatives written by hand: values shaped like the ones sought that are not
(order and invoice numbers in SSN and phone layouts, ZIP+4, dates and times in every layout,
EAN barcodes, ISBNs, amounts, version strings, routing numbers, Unix timestamps, tracking
numbers, coordinates). Phone numbers come from Faker's locale providers (so from their
national layouts, with and without the country code and extensions) and from libphonenumber's
example numbers.

``python bench/devset.py [--seed N] [--count N] [--out FILE]`` writes it as JSON in the evaluation
set's format (``full_text``, ``spans`` with ``entity_type``, ``start_position``,
``end_position``); ``bench/eval.py --dev`` scores the detectors on it. Faker is a development
dependency (MIT).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import phonenumbers
from faker import Faker

SEED = 20261205
COUNT = 3000

# Where phone numbers come from: the US most, then the locales of Tollway's users.
PHONE_LOCALES = ("en_US", "en_US", "en_US", "en_US", "en_GB", "de_DE", "fr_FR", "it_IT", "es_ES", "nl_NL",
                 "en_CA", "en_AU", "en_IN", "pt_BR", "ja_JP", "de_AT", "de_CH", "pl_PL")
EXAMPLE_REGIONS = ("US", "GB", "DE", "FR", "IT", "ES", "NL", "CA", "AU", "IN", "BR", "MX", "JP", "IE", "CH",
                   "SE", "PL", "PT", "ZA", "BE", "AT", "SG", "IL", "NZ")
CARD_TYPES = ("visa", "visa13", "visa16", "visa19", "mastercard", "amex", "discover", "diners", "jcb15", "jcb16",
              "maestro")

# Sentences: {EMAIL}, {PHONE}, {SSN}, {CARD}, {IBAN}, {IP} are labelled; the rest is noise.
TEMPLATES = (
    "Hi, this is {NAME}. Please call me back at {PHONE} regarding ticket {ORDER}.",
    "{NAME} ({EMAIL}) reported the outage from {IP} at {TIME}.",
    "Customer address: {ADDRESS}. Phone: {PHONE}. Email: {EMAIL}.",
    "Refund {AMOUNT} to card {CARD}, expiring {EXPIRY}.",
    "Wire the deposit to IBAN {IBAN} (account holder {NAME}) before {DATE}.",
    "Employee record: {NAME}, SSN {SSN}, hired {DATE}, badge {BADGE}.",
    "My social security number is {SSN} and my date of birth is {DATE}.",
    "Can you reach {NAME} on {PHONE}? Otherwise write to {EMAIL}.",
    "{PHONE}",
    "Contact: {NAME}, {COMPANY}, {PHONE}",
    "Failed login for {EMAIL} from {IP}; session {UUID}.",
    "Order {ORDER} shipped on {DATE} via tracking {TRACKING}.",
    "Invoice {INVOICE} for {AMOUNT} is due on {DATE}.",
    "The server at {IP} answered in {MS} ms after the upgrade to version {VERSION}.",
    "Ship to {ADDRESS} (ZIP {ZIP4}); leave the parcel with the neighbour.",
    "{NAME} paid with {CARD} on {DATE} at {TIME}.",
    "Card number: {CARD}, CVV {CVV}.",
    "Please update my bank details: {IBAN}.",
    "Text me on {PHONE} when you land, I'm at {ADDRESS}.",
    "For the background check we need {NAME}'s SSN ({SSN}) and current address.",
    "SKU {EAN} is back in stock; ISBN {ISBN} is not.",
    "Meeting moved to {DATE} {TIME}; dial-in {PHONE}, passcode {PIN}.",
    "Routing number {ROUTING}, account {ACCOUNT}.",
    "Logged at {UNIX} by host {IP}: disk {PERCENT}% full.",
    "Our office number changed to {PHONE}. Fax stays {PHONE2}.",
    "I was charged twice ({AMOUNT} and {AMOUNT2}) on {DATE}.",
    "Coordinates {LAT}, {LON} are where the van broke down.",
    "Reference {REF} concerns {NAME}, reachable at {EMAIL} or {PHONE}.",
    "The VPN gateway {IP} and the backup {IP2} both dropped packets.",
    "{NAME} lives at {ADDRESS} and was born on {DATE}.",
    "Case {CASE} opened {DATE}: customer says the app crashes on version {VERSION}.",
    "Please send the contract to {EMAIL}; the signed copy went to {EMAIL2}.",
    "SSN: {SSN}",
    "Call {PHONE} for support, open {HOURS}.",
    "Patient {NAME}, MRN {ACCOUNT}, next visit {DATE} at {TIME}.",
    "Transfer {AMOUNT} from {IBAN} to {IBAN2} with reference {REF}.",
    "New hire paperwork: name {NAME}, social {SSN}, phone {PHONE}.",
    "Part number {PART} replaces {PART2} from {DATE}.",
    "Tax ID on file: {SSN}. Please confirm it is still correct.",
    "My number is {PHONE}, best between {HOURS}.",
)


def _phone(fake: dict[str, Faker], rng: random.Random) -> str:
    if rng.random() < 0.25:
        region = rng.choice(EXAMPLE_REGIONS)
        kind = rng.choice((phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE))
        number = phonenumbers.example_number_for_type(region, kind) or phonenumbers.example_number(region)
        assert number is not None
        layout = rng.choice((phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.NATIONAL,
                             phonenumbers.PhoneNumberFormat.E164))
        return phonenumbers.format_number(number, layout)
    return str(fake[rng.choice(PHONE_LOCALES)].phone_number())


def _card(us: Faker, rng: random.Random) -> str:
    digits = str(us.credit_card_number(card_type=rng.choice(CARD_TYPES)))
    style = rng.random()
    if style < 0.5:
        return digits
    sep = " " if style < 0.8 else "-"
    if len(digits) == 15:  # Amex: 4-6-5
        return sep.join((digits[:4], digits[4:10], digits[10:]))
    return sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))


def _ssn(us: Faker, rng: random.Random) -> str:
    value = str(us.ssn())
    return value.replace("-", "") if rng.random() < 0.1 else value.replace("-", " ") if rng.random() < 0.1 else value


def _iban(fake: dict[str, Faker], rng: random.Random) -> str:
    value = str(fake[rng.choice(("de_DE", "en_GB", "fr_FR", "es_ES", "it_IT", "nl_NL"))].iban())
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.4 else value


def generate(seed: int = SEED, count: int = COUNT) -> list[dict[str, Any]]:
    """``count`` labelled texts (see the module docstring)."""
    rng = random.Random(seed)
    locales = sorted(set(PHONE_LOCALES) | {"en_US"})
    fake = {locale: Faker(locale) for locale in locales}
    for index, locale in enumerate(locales):
        fake[locale].seed_instance(seed + index)
    us = fake["en_US"]

    def noise(name: str) -> str:
        d = rng.randint
        return {
            "NAME": lambda: us.name(),
            "COMPANY": lambda: us.company(),
            "ADDRESS": lambda: us.address().replace("\n", ", "),
            "DATE": lambda: rng.choice((us.date(), us.date(pattern="%m/%d/%Y"), us.date(pattern="%d.%m.%Y"),
                                        us.date(pattern="%B %d, %Y"), us.date(pattern="%Y%m%d"))),
            "TIME": lambda: rng.choice((us.time(), us.time(pattern="%H:%M"), us.time(pattern="%I:%M %p"))),
            "ORDER": lambda: rng.choice((f"#{d(100000, 999999)}", f"ORD-{d(2019, 2026)}-{d(100000, 999999)}",
                                         f"{d(100, 999)}-{d(1000, 9999)}-{d(100, 999)}", f"{d(10**9, 10**10 - 1)}")),
            "INVOICE": lambda: rng.choice((f"INV-{d(100, 999)}-{d(10, 99)}-{d(1000, 9999)}",
                                           f"{d(100, 999)}-{d(10, 99)}-{d(1000, 9999)}", f"INV{d(10**6, 10**7)}")),
            "TRACKING": lambda: rng.choice((f"1Z{us.bothify('???######????').upper()}", str(d(10**11, 10**12)),
                                            f"{d(1000, 9999)} {d(1000, 9999)} {d(1000, 9999)}")),
            "AMOUNT": lambda: rng.choice((f"${d(1, 99999):,}.{d(0, 99):02}", f"EUR {d(1, 9999)},{d(0, 99):02}",
                                          f"{d(1, 999999):,} USD")),
            "EXPIRY": lambda: f"{d(1, 12):02}/{d(25, 31)}",
            "BADGE": lambda: str(d(10000, 99999)),
            "UUID": lambda: us.uuid4(),
            "MS": lambda: str(d(1, 5000)),
            "VERSION": lambda: rng.choice((f"{d(1, 20)}.{d(0, 20)}.{d(0, 99)}",
                                           f"{d(1, 9)}.{d(0, 9)}.{d(0, 9)}.{d(0, 999)}")),
            "ZIP4": lambda: f"{d(10000, 99999)}-{d(1000, 9999)}",
            "CVV": lambda: str(d(100, 999)),
            "EAN": lambda: us.ean13(),
            "ISBN": lambda: rng.choice((us.isbn13(), us.isbn10())),
            "PIN": lambda: str(d(1000, 999999)),
            "ROUTING": lambda: us.aba(),
            "ACCOUNT": lambda: str(d(10**7, 10**12)),
            "UNIX": lambda: str(d(1_500_000_000, 1_800_000_000)),
            "PERCENT": lambda: str(d(1, 100)),
            "LAT": lambda: str(us.latitude()),
            "LON": lambda: str(us.longitude()),
            "REF": lambda: rng.choice((f"{d(100, 999)}-{d(100, 999)}-{d(1000, 9999)}", f"REF{d(10**5, 10**8)}",
                                       f"{d(1000, 9999)}-{d(1000, 9999)}")),
            "CASE": lambda: f"{d(10**7, 10**8)}",
            "HOURS": lambda: rng.choice(("9-5", "8:00-17:30", "10 am to 6 pm", "24/7")),
            "PART": lambda: f"{d(100, 999)}-{d(100, 999)}-{d(10, 99)}",
            "PART2": lambda: f"{d(10, 99)}-{d(1000, 9999)}-{d(100, 999)}",
            "AMOUNT2": lambda: f"${d(1, 999)}.{d(0, 99):02}",
        }[name]()

    labelled = {
        "EMAIL": ("EMAIL_ADDRESS", lambda: rng.choice((us.email(), us.company_email(), us.free_email(),
                                                        fake[rng.choice(locales)].email()))),
        "PHONE": ("PHONE_NUMBER", lambda: _phone(fake, rng)),
        "SSN": ("US_SSN", lambda: _ssn(us, rng)),
        "CARD": ("CREDIT_CARD", lambda: _card(us, rng)),
        "IBAN": ("IBAN_CODE", lambda: _iban(fake, rng)),
        "IP": ("IP_ADDRESS", lambda: us.ipv4() if rng.random() < 0.7 else us.ipv6()),
    }
    out = []
    for _ in range(count):
        template = rng.choice(TEMPLATES)
        text, spans = "", []
        rest = template
        while "{" in rest:
            head, _, tail = rest.partition("{")
            name, _, rest = tail.partition("}")
            text += head
            base = name.rstrip("2")
            if base in labelled:
                kind, make = labelled[base]
                value = make()
                spans.append({"entity_type": kind, "entity_value": value, "start_position": len(text),
                              "end_position": len(text) + len(value)})
            else:
                value = noise(name)
            text += value
        text += rest
        out.append({"full_text": text, "spans": spans, "template": template})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--out", type=Path, help="write here (default: stdout)")
    args = parser.parse_args()
    data = json.dumps(generate(args.seed, args.count), ensure_ascii=False, indent=1)
    if args.out:
        args.out.write_text(data)
    else:
        sys.stdout.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
