"""The PII development set: labelled texts generated with Faker, for tuning the detectors.

Why a set of our own: the evaluation set (presidio-research's synthetic texts, read by
``bench/eval.py``) measures the detectors, and a detector revised until that set's figures look
good is tuned on it, whatever its author meant. Rules are tried on this set instead, and the
evaluation set is run once the rules are settled.

What it holds (``generate(seed, count, part)``, deterministic for a seed and a Faker version):
sentences in the tone of support tickets, CRM notes, chat messages, e-mail signatures, tables,
CSV and JSON records and logs, each with zero to three labelled values (email, phone, US SSN,
payment card, IBAN, IPv4/IPv6) among unlabelled noise Faker also writes (names, street addresses
with postcodes, companies, dates), and hard negatives written by hand: values shaped like the
ones sought that are not (order, invoice, ticket and employee numbers in SSN and phone layouts,
ZIP+4 and national postcodes, dates, times and timestamps in every layout, amounts and counts
with thousands separators, EAN barcodes, ISBNs, IMEIs, card-like digits that fail Luhn, versions,
routing, account and sort codes, Unix timestamps, tracking numbers, coordinates, ranges,
verification codes, measurements), and codes Faker's own generators write (ABA routing numbers,
EINs, EAN/UPC barcodes, ISBNs, passport numbers) with no word naming them, and "number" before
numbers that are not phone numbers.

Phone numbers come from four sources: Faker's ``phone_number`` providers of 45 locales (each
with its national layouts, with and without the country code and extensions), numbers of 40
regions built on libphonenumber's example numbers and written in its international, national and
E.164 formats and in the variations people type (dots, dashes, no separators, ``00`` for ``+``,
``+44 (0)``, the area code in parentheses), North American numbers in hand-written layouts, and
numbers in the layouts test-data generators fill with any digit (older Faker's and
presidio-research's phone provider's, MIT: area codes from 0 and 1 too; :data:`GENERATED_TUNE`);
and, added in a third pass, Faker's remaining phone providers (:data:`MORE_TUNE_LOCALES`) and
mimesis's phone masks per locale (MIT, any digit: :data:`MIMESIS_TUNE`); one in ten gets an
extension (``x123``, ``ext. 12``, ``extension 4``), one in twenty no-break spaces and en dashes.
They appear after a phone word, with the word after them, with no phone word at all, in lists,
signatures, contact cards, tables, CSV, TSV, JSON and ``key: value`` records (``phone_number:``),
among other numbers (:data:`MORE_TEMPLATES`), in several languages; and US driving licence
numbers and street addresses as presidio-research's providers write them (MIT) are among the
numbers that are none.

Two parts (``part``): ``tune``, the one to look at and tune on (``bench/eval.py --dev --show N``
prints its misses), and ``holdout``: other Faker locales, other libphonenumber regions and other
sentence templates, whose figures say whether what was tuned generalises to layouts and contexts
it never showed (``bench/eval.py --dev`` prints both; its misses are not printed).

``python bench/devset.py [--seed N] [--count N] [--part tune|holdout] [--out FILE]`` writes it as
JSON in the evaluation set's format (``full_text``, ``spans`` with ``entity_type``,
``start_position``, ``end_position``); ``bench/eval.py --dev`` scores the detectors on it. Faker
is a development dependency (MIT).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import phonenumbers
from faker import Faker

SEED = 20261205
COUNT = 4000  # texts of the tune part; the holdout part has half as many
PARTS = ("tune", "holdout")

# Faker locales whose phone_number providers write the numbers: the US most (the language of most
# prompts), then the rest of the world. The holdout part draws from other locales.
TUNE_LOCALES = ("en_US",) * 8 + ("en_GB", "en_GB", "en_CA", "en_AU", "en_IN", "fr_FR", "fr_CH", "de_DE", "de_CH",
                                 "de_AT", "nl_NL", "nl_BE", "it_IT", "es_ES", "es_MX", "pt_BR", "pt_PT", "sv_SE",
                                 "da_DK", "no_NO", "fi_FI", "pl_PL", "cs_CZ", "hu_HU", "ro_RO", "ru_RU", "uk_UA",
                                 "tr_TR", "el_GR", "he_IL", "ja_JP", "zh_CN", "ko_KR", "id_ID", "th_TH", "vi_VN")
HOLDOUT_LOCALES = ("en_US",) * 4 + ("en_NZ", "es_AR", "es_CL", "es_CO", "sk_SK", "bg_BG", "hr_HR", "sl_SI",
                                    "lt_LT", "lv_LV", "zh_TW", "fa_IR", "ar_AE", "az_AZ", "it_CH", "de_LU",
                                    "ka_GE", "hy_AM", "uz_UZ", "ne_NP", "tw_GH")
# Faker locales added in the third pass (the rest of Faker's phone providers that write numbers in
# ASCII digits), drawn as often as the others together: tune and holdout apart.
MORE_TUNE_LOCALES = ("am_ET", "hi_IN", "mk_MK", "de_LI")
MORE_HOLDOUT_LOCALES = ("ar_PS", "bs_BA", "ar_DZ")
# mimesis 22.2 (MIT): its Person.phone_number() masks per locale, "#" any digit (copied from its
# datasets/*/person.json "telephone_fmt"; for "en" a few of its area codes; en-au and en-ca have
# none and fall back to "<calling code>-(###)-###-####"). The locales are split, not the masks.
MIMESIS_TUNE = {
    "en": ("+1-415-###-####", "+1-212-###-####", "+1-907-###-####", "+1617#######", "+1305#######"),
    "en-au": ("+61-(###)-###-####",),
    "en-gb": ("+44 ## #### ####", "01#### #####", "01### ######", "01#1 ### ####", "011# ### ####",
              "02# #### ####", "03## ### ####", "0800 ### ####", "08## ### ####", "01### #####", "0800 ######"),
    "de": ("(0####) #######", "(0###) #########", "+49-####-########", "+49-###-#######", "+49-##-###-#####"),
    "de-at": ("+43 ########", "+43-1-#######", "+43-6##-#######", "+43-####-####", "+431#######"),
    "fr": ("01########", "04########", "06########", "07########", "+33 1########", "+33 6########"),
    "es": ("+34 91# ## ## ##", "9##-###-###", "9##.###.###", "9## ### ###", "9########"),
    "es-mx": ("5###-###-###", "5## ### ###", "+52 ## ### ###", "+52 ### ### ###", "+52 ## #### ####"),
    "it": ("+39 0## ### ###", "+39 3## ### ###", "+39 6 ########", "+39 ### ########"),
    "pt-br": ("(##) ####-####", "+55 (##) ####-####", "(##) #####-####", "+55-91 ####-####", "+55-21 ####-####"),
    "ru": ("+7-(96#)-###-##-##", "+7-(92#)-###-##-##", "+7-(999)-###-##-##", "+7-(9##)-###-##-##"),
    "uk": ("+380-(50)-###-##-##", "+380-(66)-###-##-##", "+380-(93)-###-##-##", "+380-(99)-###-##-##"),
    "kk": ("+7-(71##)-##-##-##", "+7-(701)-###-##-##", "+7-(777)-###-##-##"),
    "tr": ("+90 (5##) ### ## ##", "+90 (###) ### ## ##", "+90 ### ### ## ##"),
    "pl": ("+48 ### ### ###", "+48 ###-###-###", "+48 ### ## ## ##", "+48 ###-##-##-##"),
    "nl-be": ("0# ### ## ##", "0## ### ## ##", "+32-###-##-##-#", "+32 2 ### ####", "+32 ## ### ####"),
    "ar-eg": ("0#########", "010########", "011########", "(+20) #########", "(+20) 10########"),
    "ar-sa": ("0#########", "05########", "(+966) 5########", "(+966) #########"),
    "ja": ("+81 ### #### ####", "+81 ## #### ####", "+81 # #### ####"),
    "et": ("####-####", "(####)-####", "####.####", "372-#-####-####", "+372-(#)-####-####"),
    "fa": ("+98-###-########", "+98-912-########", "###-########", "061-####-####", "+98-61-####-####"),
}
MIMESIS_HOLDOUT = {
    "en-ca": ("+1-(###)-###-####",),
    "de-ch": ("+41 43 ### ## ##", "+41 56 ### ## ##", "+41 78 ### ## ##", "+41 ## ### ## ##"),
    "nl": ("+31 ## ### ####", "+31 ## #######", "+31 6 ########"),
    "no": ("+47 #### ####", "+47 2 #### ####", "4## ## ###"),
    "sv": ("+46 ### ### ###", "+46-###-###-###"),
    "da": ("## ## ## ##", "## ### ###", "#### ####", "+45 ### ### ###"),
    "fi": ("+358 ## ### ####", "+358 # ### ####"),
    "cs": ("601 ### ###", "737 ### ###", "### ### ###", "+420 ### ### ###"),
    "sk": ("+421-###-###-####", "+421-##-###-####", "+421-#-####-####"),
    "hu": ("+36 1 ### ###", "+36 ## ### ###", "+36 ## ### ####"),
    "pt": ("+351 # #### ####", "+351 ## #### ####"),
    "ko": ("+82 ## #### ####", "+82-##-####-####"),
    "zh": ("+86 ###-########",),
    "az": ("+994 (050) ### ## ##", "+994 (055) ### ## ##", "+994 (070) ### ## ##"),
    "el": ("23########", "69########", "+30 23########"),
    "ar-ae": ("(+971) 5#########", "(+971) #########"),
    "ar-ma": ("05########", "06########", "(+212) 05########", "(+212) 06########"),
    "hr": ("+385 1 ### ###", "+385 21 ### ###", "+385 91 ### ## ##", "+385 98 ### ## ##"),
}
# US driving licence numbers as presidio-research's provider writes them (its
# us_driver_license_format.yaml, adapted from faker-ruby's: MIT; "?" a letter, "#" a digit):
# numbers that are no phone numbers, bare digits of a phone number's lengths among them. The
# states are split between the parts.
LICENSE_TUNE = ("######", "#######", "########", "?########", "#########", "?#######", "?######", "??#####",
                "?############", "??######", "?#########", "?###########", "###??####", "##########",
                "#############", "?######R", "########??", "############")
LICENSE_HOLDOUT = ("##############", "X########", "##???#####", "?##############", "###########",
                   "#######A", "?##########", "?#############", "##########", "#########", "########")
# libphonenumber regions whose example numbers are varied and written out.
TUNE_REGIONS = ("US", "US", "GB", "DE", "FR", "IT", "ES", "NL", "CA", "AU", "IN", "BR", "MX", "JP", "IE", "CH",
                "SE", "PL", "PT", "ZA", "BE", "AT", "SG", "IL", "NZ", "DK", "NO", "FI", "CN", "KR", "RU", "TR",
                "GR", "CZ", "HU", "PH", "NG", "AE", "AR", "HK")
HOLDOUT_REGIONS = ("US", "CO", "CL", "PE", "SA", "EG", "KE", "MY", "TW", "TH", "VN", "ID", "PK", "UA", "RO", "LU",
                   "SK", "HR")
# Numbers as test-data generators write them, any digit in any place: older Faker and
# presidio-research's PhoneNumberProviderNew (MIT) fill North American layouts with "#", where
# a real number's area code and exchange start with 2-9; and that provider's UK, Indian, Swiss
# and Swedish layouts. Half the layouts tune, the other half are held out.
GENERATED_TUNE = ("###-###-####", "(###)###-####", "###.###.####x###", "+1-###-###-####", "07700 ### ###",
                  "(07700) ######", "+91##########", "+41 (0)7# ### ## ##", "+46 (0)8 ### ### ##", "##########")
GENERATED_HOLDOUT = ("###.###.####", "(###)###-####x####", "001-###-###-####", "###-###-####x###", "+447700######",
                     "0##########", "+41 4# ### ## ##", "+46 (0)## ## ## ##", "###-#######")
CARD_TYPES = ("visa", "visa13", "visa16", "visa19", "mastercard", "amex", "discover", "diners", "jcb15", "jcb16",
              "maestro")
NOISE_LOCALES = ("en_GB", "de_DE", "fr_FR", "nl_NL", "ja_JP", "es_ES", "it_IT", "pl_PL")

# Sentences: {EMAIL}, {PHONE}, {SSN}, {CARD}, {IBAN}, {IP} (and the same with a digit: {PHONE2})
# are labelled; the rest is noise. The first block is the original set (every entity).
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
    # Phone numbers in more contexts: a phone word before, after, or none; lists, signatures, tables.
    "Tel. {PHONE} | Fax {PHONE2} | {EMAIL}",
    "Mobile: {PHONE}\nEmail: {EMAIL}\nAddress: {ADDRESS}",
    "You can reach our hotline on {PHONE} ({HOURS}).",
    "WhatsApp me: {PHONE}",
    "Dial {PHONE} and ask for {NAME} in accounts.",
    "{PHONE} is my work number, {PHONE2} my cell.",
    "{NAME}, {COMPANY}, {ADDRESS}, {PHONE}",
    "{NAME} - {PHONE} - {EMAIL}",
    "I tried {PHONE} twice yesterday but nobody picked up.",
    "Emergency contacts: {NAME} {PHONE}; {NAME2} {PHONE2}.",
    "Numbers to try: {PHONE}, {PHONE2} or {PHONE3}.",
    "- {NAME}: {PHONE}\n- {NAME2}: {PHONE2}\n- {NAME3}: {PHONE3}",
    "Best regards,\n{NAME}\n{JOB}, {COMPANY}\nT {PHONE} | M {PHONE2}\n{EMAIL}",
    "--\n{NAME}\n{COMPANY}\n{ADDRESS}\n{PHONE}",
    "| name | phone | city |\n|---|---|---|\n| {NAME} | {PHONE} | {CITY} |\n| {NAME2} | {PHONE2} | {CITY2} |",
    "name,phone,email,joined\n{NAME},{PHONE},{EMAIL},{DATE}",
    '{"name": "{NAME}", "phone": "{PHONE}", "zip": "{ZIP}", "since": "{DATE}"}',
    "Telefon: {PHONE}, E-Mail: {EMAIL}",
    "Tél. : {PHONE}",
    "Teléfono de contacto {PHONE}, horario {HOURS}.",
    "{NAME} ({JOB}) can be reached at {PHONE} or {EMAIL}.",
    "Hey, it's {NAME}. New number: {PHONE}. Save it!",
    "Please ring {NAME} on {PHONE} after {TIME}.",
    "Callback requested by {NAME} on {DATE} at {TIME}: {PHONE}.",
    "Our {CITY} office: {ADDRESS}. Phone {PHONE}, fax {PHONE2}.",
    "{NAME} was born on {DATE}, lives at {ADDRESS} and uses {PHONE} as her primary number.",
    "If the line is busy try {PHONE}.",
    "Driver {NAME} ({PHONE}) will pick you up at {TIME}; booking {BOOKING}.",
    "Reservation for {QTY} under {NAME}, contact {PHONE}.",
    # Hard negatives: numbers of every other kind, no phone among them.
    "Order {ORDER} ({QTY} items, {AMOUNT}) was placed on {DATE} at {TIME}.",
    "Build {VERSION} ({BUILD}) was released on {DATE}.",
    "Population {BIGINT} in {YEAR}, up from {BIGINT2} in {YEAR2}.",
    "Transaction {TXN} on {ISO}: {AMOUNT} debited from account {ACCOUNT}, sort code {SORTCODE}.",
    "Tracking number {TRACKING}; estimated delivery {DATE}.",
    "Serial {SERIAL}, IMEI {IMEI}, firmware {VERSION}.",
    "Coordinates: {LAT}, {LON} (elevation {MEASURE}).",
    "{ISO} INFO latency_ms={MS} request_id={REQID} user={USERID} status=200",
    "Between {YEAR} and {YEAR2} revenue grew from {AMOUNT} to {AMOUNT2}.",
    "Your verification code is {PIN}. It expires in 10 minutes.",
    "The test card {CARDLIKE} was declined, as expected.",
    "Ship to {INTLADDRESS}.",
    "{NAME} ({AGE}) was admitted on {DATE}, MRN {ACCOUNT}, bed {ROOM}.",
    "Flight {FLIGHT} departs at {TIME} from gate {GATE}; booking {BOOKING}.",
    "See pages {PAGES} and the figures for {YEARS}.",
    "Employee {EMPID} ({NAME}), cost centre {COSTCENTRE}, started {DATE}.",
    "Meter reading {BIGINT} kWh on {DATE}, previous {BIGINT2} kWh.",
    "Barcodes: {EAN}, {EAN2}, {UPC}.",
    "Event at {UNIXMS} ms, retried after {MS} ms.",
    "ISBN {ISBN}, {PAGECOUNT} pages, printed {YEAR}.",
    "Ticket {TICKET} was merged into {TICKET2} on {DATE}.",
    "The contract {CONTRACT} runs from {DATE} to {DATE2}.",
    "Invoice {INVOICE}: {QTY} x {AMOUNT2}, total {AMOUNT}, paid {DATE}.",
    "Download {VERSION} (sha {HEX}), {MEASURE}.",
    "Results: {SCORES}.",
    "The shipment weighs {MEASURE} and measures {DIMENSIONS}.",
    "Customer {USERID} placed order {ORDER} from {CITY}, {ZIP}.",
    "Passport {PASSPORT} expires on {DATE}; driver's license {LICENSE}.",
    "{NAME}'s bank account {BANKACCT} at {COMPANY} was closed on {DATE}.",
    "ITIN {ITIN} was issued to {NAME} in {YEAR}.",
    "I am {AGE} years old, born {DATE}, and my license number is {LICENSE}.",
    "We handled {BIGINT} calls and {BIGINT2} texts in {YEAR}.",
    "Call volume: {BIGINT} in {YEAR}, {BIGINT2} in {YEAR2}.",
    "I called on {DATE} at {TIME} about invoice {INVOICE}.",
    "My phone bill was {AMOUNT} in {MONTH}; the plan costs {AMOUNT2}.",
    "Text me the code {PIN} you got at {TIME}.",
    "Send {AMOUNT} to {NAME}, account {BANKACCT}, routing {ROUTING}.",
    "Mobile data used: {MEASURE} of {MEASURE2} since {DATE}.",
    "Reach the {ORDINAL} floor, room {ROOM}, by {TIME} on {DATE}.",
    "{NAME} owes {AMOUNT}; last payment {DATE} ({BANKACCT}).",
    # Codes of other kinds with no word naming them right before (Faker's own generators).
    "Bank details for {NAME}: {ABA} / {BANKACCT}.",
    "{COMPANY} ({EIN}) filed its return on {DATE}.",
    "Scanned {GTIN} and {GTIN2} at the till, {AMOUNT} in total.",
    "Book: {ISBNH}, {PAGECOUNT} pages, {AMOUNT}.",
    "{NAME}, born {DATE}, travel document {PASSPORT}, nationality on file.",
    "Mail it to {ADDRESS}, {NAME}, {ZIP}.",
    "Items {GTIN}, {GTIN2} and {GTIN3} are out of stock.",
    # "number" alone: a phone number, unless a word before says which number.
    "The number is {PHONE}, ask for {NAME}.",
    "Number: {PHONE}",
    "Catalogue number {GTIN} was discontinued on {DATE}.",
    "The number of visitors reached {BIGINT} in {YEAR}.",
    "Your confirmation number is {BOOKING}.",
    "Serial number {SERIAL}, lot number {ACCOUNT}.",
    # A contact card's labels, and the same words before other numbers.
    "{NAME}\nHome: {PHONE}\nWork: {PHONE2}",
    "Office: {PHONE} | Direct: {PHONE2}",
    "Office hours {HOURS}; our office has {BIGINT} visitors a year.",
    "Work started on {DATE}: {QTY} units, {MEASURE}.",
)
# Templates only the holdout part uses (and the holdout part uses no other phone templates).
HOLDOUT_TEMPLATES = (
    "Kontakt: {NAME}, Tel. {PHONE}, Handy {PHONE2}",
    "For urgent matters phone {PHONE}; otherwise email {EMAIL}.",
    "{NAME}'s cell is {PHONE}.",
    "Send the courier to {ADDRESS}, recipient {NAME}, {PHONE}.",
    "Support: {PHONE} / {EMAIL} / {HOURS}",
    "{NAME} {PHONE}",
    "Attendees: {NAME} ({PHONE}), {NAME2} ({PHONE2}).",
    "<tr><td>{NAME}</td><td>{PHONE}</td><td>{EMAIL}</td></tr>",
    "contact_phone: {PHONE}\ncontact_email: {EMAIL}",
    "Left a voicemail at {PHONE} on {DATE}, will follow up.",
    "Could you update my number to {PHONE}? The old one, {PHONE2}, is gone.",
    "{COMPANY} · {ADDRESS} · {PHONE} · {EMAIL}",
    "Order {ORDER} for {NAME}: deliver {DATE} between {HOURS}, call {PHONE} on arrival.",
    "Statement {INVOICE}: balance {AMOUNT} as of {DATE}, account {ACCOUNT}.",
    "Release {VERSION} closes issues {TICKET} and {TICKET2}.",
    "At {ISO} the sensor read {MEASURE}; next sample at {UNIX}.",
    "{QTY} units shipped to {INTLADDRESS} on {DATE}.",
    "Passport no. {PASSPORT}, issued {DATE}, expires {DATE2}.",
    "Calls answered: {BIGINT}; average wait {MS} ms.",
    "The phone costs {AMOUNT} and ships on {DATE}.",
    "Claim {CONTRACT} filed {DATE} for {AMOUNT}.",
    "Payee {NAME}, {ABA}, {BANKACCT}; employer {EIN}.",
    "Reading list: {ISBNH} and {ISBNH2}.",
    "Box of {QTY}: {GTIN} ({ISO}).",
    "{NAME} ({PASSPORT}) checked in at {TIME}.",
    "Best number to use: {PHONE}.",
    "Document number {PASSPORT}, permit number {ACCOUNT}.",
)
# Layouts added in the third pass: phone numbers among other numbers (dates, orders, postcodes,
# amounts, identifiers), in key: value text, JSON and CSV, and further from their word; and
# numbers of other kinds in the same places. Tune and holdout have their own.
MORE_TEMPLATES = (
    "phone_number: {PHONE}\nzip: {ZIP}\nbirthdate: {DATE}",
    '{"id": {USERID}, "name": "{NAME}", "tel": "{PHONE}", "postcode": "{ZIP}", "total": "{AMOUNT}"}',
    "id,name,mobile,zip,amount\n{USERID},{NAME},{PHONE},{ZIP},{AMOUNT}",
    "{NAME}\t{PHONE}\t{ZIP}\t{DATE}",
    "Order {ORDER} ({DATE}): deliver to {PADDRESS}, {PHONE}.",
    "{NAME}, {AGE}, {PADDRESS}. {PHONE}.",
    "Is {PHONE} still the best way to get hold of you?",
    "The phone number we have on file for {NAME} since {DATE} is {PHONE}.",
    "Driver license {DLICENSE}, phone {PHONE}, DOB {DATE}.",
    "{PHONE} ({NAME}, {CITY}, {ZIP})",
    "Please send the documents to {PADDRESS} or call {NAME} at {PHONE} before {DATE}.",
    "Patient: {NAME}\nDOB: {DATE}\nMRN: {ACCOUNT}\nPhone: {PHONE}\nInsurance: {DLICENSE}",
    "Got a missed call from {PHONE} at {TIME} on {DATE}, no message.",
    "I'm {NAME}, {AGE} years old, from {CITY}; my mobile is {PHONE}.",
    # numbers of other kinds only
    "{NAME}'s driver's license is {DLICENSE} and expires {DATE}.",
    "{NAME}, {PADDRESS}, license {DLICENSE}.",
    "{NAME} ({AGE}) lives at {PADDRESS}.",
    "Wire {AMOUNT} to {BBAN} ({SWIFT}) by {DATE}.",
    "Plate {PLATE} was seen at {PADDRESS} on {DATE} at {TIME}.",
    "US passport {PASSPORT} for {NAME}, born {DATE} in {CITY}.",
    "{NAME} {DLICENSE} {DATE}",
    "Paid {NUMAMOUNT} on {DATE} for order {ORDER}.",
    "{NAME} moved to {PADDRESS} in {YEAR}.",
)
MORE_HOLDOUT_TEMPLATES = (
    "mobile = {PHONE}\npostcode = {ZIP}\nmember_since = {DATE}",
    '[{"contact": "{NAME}", "number": "{PHONE}"}, {"contact": "{NAME2}", "number": "{PHONE2}"}]',
    "{USERID};{NAME};{PHONE};{ZIP}",
    "Delivery {ORDER} on {DATE}: {PADDRESS}, tel {PHONE}, {AMOUNT} due.",
    "{NAME} (born {DATE}) - {PHONE}",
    "Please confirm that {PHONE} belongs to {NAME} of {PADDRESS}.",
    "My cell phone, in case you need it, is {PHONE}.",
    "{NAME}: DL {DLICENSE}; phone {PHONE}; {AGE} years.",
    "License {DLICENSE} was issued to {NAME} of {PADDRESS} on {DATE}.",
    "{NAME}, {AGE}, {PADDRESS}",
    "IBAN-less transfer: account {BBAN}, bank {SWIFT}, {NUMAMOUNT}.",
    "Vehicle {PLATE}, owner {NAME}, licence {DLICENSE}.",
    "{NAME} {PASSPORT} {DATE} {CITY}",
)
# Street addresses as presidio-research's AddressProviderNew writes them (MIT; building numbers,
# secondary units, postcodes, line breaks), split between the parts.
ADDRESS_TUNE = ("{{building_number}} {{street_name}} {{secondary_address}} {{city}} {{state}}",
                "{{building_number}} {{street_name}} {{secondary_address}} {{city}} {{country}}",
                "{{building_number}} {{street_name}}\n {{secondary_address}}\n {{city}}\n {{country}} {{postcode}}",
                "{{street_address}}, {{city}}, {{country}}",
                "{{street_address}}\n{{city}}, {{state_abbr}} {{postcode}}",
                "{{street_address}}\n{{city}}\n, {{state_abbr}}\n {{country}} {{postcode}}",
                "{{military_apo}}\nAPO {{military_state}} {{postcode}}")
ADDRESS_HOLDOUT = ("{{building_number}} {{street_name}} {{secondary_address}} {{city}} {{state_abbr}}",
                   "{{building_number}} {{street_name}}\n {{secondary_address}}\n {{city}}\n {{country}}",
                   "{{street_name}} {{street_name}}\n {{secondary_address}}\n {{city}}\n {{country}} {{postcode}}",
                   "{{street_address}} {{secondary_address}}, {{city}}, {{country}} {{postcode}}",
                   "{{street_address}}\n{{city}}\n, {{state_abbr}}\n {{postcode}}",
                   "{{military_ship}} {{last_name}}\nFPO {{military_state}} {{postcode}}",
                   "{{military_dpo}}\nDPO {{military_state}} {{postcode}}")
PHONE_WORD = re.compile(r"\{PHONE\d?\}")
EXTENSIONS = (" x{}", "x{}", " ext. {}", " ext {}", " Ext. {}", " extension {}")


def _vary(number: phonenumbers.PhoneNumber, rng: random.Random) -> str:
    """``number`` written as people write it: libphonenumber's formats and common variations."""
    f = phonenumbers.PhoneNumberFormat
    style = rng.random()
    if style < 0.3:
        return phonenumbers.format_number(number, f.INTERNATIONAL)
    if style < 0.55:
        return phonenumbers.format_number(number, f.NATIONAL)
    if style < 0.65:
        return phonenumbers.format_number(number, f.E164)
    intl = rng.random() < 0.5
    text = phonenumbers.format_number(number, f.INTERNATIONAL if intl else f.NATIONAL)
    change = rng.random()
    if change < 0.3:  # another separator
        sep = rng.choice((".", "-", "", " "))
        head, _, rest = text.partition(" ") if intl else ("", "", text)
        rest = re.sub(r"[ \-]", sep, rest)
        text = f"{head} {rest}" if intl else rest
    elif change < 0.5 and intl:  # 00 for +
        text = "00" + text[1:]
    elif change < 0.7 and intl:  # the trunk prefix in parentheses: +44 (0)20 ...
        head, _, rest = text.partition(" ")
        region = phonenumbers.region_code_for_number(number)
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if metadata is not None and metadata.national_prefix:
            text = f"{head} ({metadata.national_prefix}){rng.choice(('', ' '))}{rest}"
    elif change < 0.85 and not intl:  # the area code in parentheses
        groups = text.split(" ")
        if len(groups) > 2 and "(" not in text:
            text = f"({groups[0]}) " + " ".join(groups[1:])
    else:  # digits only
        text = ("+" if intl else "") + re.sub(r"\D", "", text)
    return text


def _example(region: str, rng: random.Random) -> str:
    kinds = (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE,
             phonenumbers.PhoneNumberType.TOLL_FREE)
    base = phonenumbers.example_number_for_type(region, rng.choice(kinds)) or phonenumbers.example_number(region)
    assert base is not None
    national = str(base.national_number)
    for _ in range(10):  # other last digits: mostly still valid numbers of the same range
        tail = "".join(rng.choice("0123456789") for _ in range(min(4, len(national) - 3)))
        candidate = phonenumbers.PhoneNumber(country_code=base.country_code,
                                             national_number=int(national[:len(national) - len(tail)] + tail),
                                             italian_leading_zero=base.italian_leading_zero)
        if phonenumbers.is_valid_number(candidate):
            return _vary(candidate, rng)
    return _vary(base, rng)


def _north_american(rng: random.Random) -> str:
    area, exchange, line = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    layout = rng.choice(("({a}) {e}-{l}", "({a}) {e} {l}", "{a}-{e}-{l}", "{a} {e} {l}", "{a}.{e}.{l}",
                         "1-{a}-{e}-{l}", "1 ({a}) {e}-{l}", "+1 {a} {e} {l}", "+1 ({a}) {e}-{l}", "{a}/{e}-{l}",
                         "{a} - {e} - {l}", "{e}-{l}"))
    return layout.format(a=area, e=exchange, l=f"{line:04}")


def _fill(mask: str, rng: random.Random) -> str:
    """A test-data generator's mask with any digit for "#" (and any letter for "?")."""
    return "".join(str(rng.randint(0, 9)) if c == "#" else chr(rng.randint(65, 90)) if c == "?" else c
                   for c in mask)


def _phone(fake: dict[str, Faker], rng: random.Random, part: str) -> str:
    style = rng.random()
    if style < 0.42:
        value = str(fake[rng.choice(TUNE_LOCALES if part == "tune" else HOLDOUT_LOCALES)].phone_number())
    elif style < 0.48:
        value = str(fake[rng.choice(MORE_TUNE_LOCALES if part == "tune" else MORE_HOLDOUT_LOCALES)].phone_number())
    elif style < 0.68:
        value = _example(rng.choice(TUNE_REGIONS if part == "tune" else HOLDOUT_REGIONS), rng)
    elif style < 0.78:
        masks = MIMESIS_TUNE if part == "tune" else MIMESIS_HOLDOUT
        value = _fill(rng.choice(masks[rng.choice(sorted(masks))]), rng)
    elif style < 0.89:
        value = _north_american(rng)
    else:
        value = _fill(rng.choice(GENERATED_TUNE if part == "tune" else GENERATED_HOLDOUT), rng)
    if rng.random() < 0.05:  # as a word processor or another language writes it: no-break spaces, en dashes
        value = value.replace(" ", rng.choice(("\u00a0", "\u202f"))).replace("-", "\u2013")
    if rng.random() < 0.1 and not re.search(r"[a-z]", value):
        value += rng.choice(EXTENSIONS).format(rng.randint(1, 99999) if rng.random() < 0.5 else rng.randint(1, 999))
    return value


def _card(us: Faker, rng: random.Random) -> str:
    digits = str(us.credit_card_number(card_type=rng.choice(CARD_TYPES)))
    style = rng.random()
    if style < 0.5:
        return digits
    sep = " " if style < 0.8 else "-"
    if len(digits) == 15:  # Amex: 4-6-5
        return sep.join((digits[:4], digits[4:10], digits[10:]))
    return sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))


def _not_luhn(rng: random.Random) -> str:
    """Sixteen digits in card groups that fail the Luhn check (test data, account numbers)."""
    while True:
        digits = "".join(rng.choice("0123456789") for _ in range(16))
        total = sum(int(c) if i % 2 else sum(divmod(int(c) * 2, 10)) for i, c in enumerate(digits))
        if total % 10:
            break
    sep = rng.choice((" ", "-", ""))
    return sep.join(digits[i:i + 4] for i in range(0, 16, 4))


def _ssn(us: Faker, rng: random.Random) -> str:
    value = str(us.ssn())
    return value.replace("-", "") if rng.random() < 0.1 else value.replace("-", " ") if rng.random() < 0.1 else value


def _iban(fake: dict[str, Faker], rng: random.Random) -> str:
    value = str(fake[rng.choice(("de_DE", "en_GB", "fr_FR", "es_ES", "it_IT", "nl_NL"))].iban())
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.4 else value


def _grouped(value: int, rng: random.Random) -> str:
    """A count with thousands separators as the world writes them."""
    sep = rng.choice((",", ".", " ", "\u202f", "\u00a0", "'", ""))
    text = f"{value:,}"
    return text.replace(",", sep)


def _templates(part: str) -> tuple[str, ...]:
    if part == "tune":
        return TEMPLATES + MORE_TEMPLATES
    # The holdout part: its own templates, and the rest of the original ones without a phone.
    return HOLDOUT_TEMPLATES + MORE_HOLDOUT_TEMPLATES + tuple(t for t in TEMPLATES if not PHONE_WORD.search(t))


def generate(seed: int = SEED, count: int | None = None, part: str = "tune") -> list[dict[str, Any]]:
    """``count`` labelled texts of ``part`` (see the module docstring)."""
    if part not in PARTS:
        raise ValueError(f"part: one of {PARTS}")
    if count is None:
        count = COUNT if part == "tune" else COUNT // 2
    rng = random.Random(f"{seed}-{part}" if part != "tune" else seed)
    locales = sorted(set(TUNE_LOCALES) | set(HOLDOUT_LOCALES) | set(NOISE_LOCALES) | set(MORE_TUNE_LOCALES)
                     | set(MORE_HOLDOUT_LOCALES))
    fake = {locale: Faker(locale) for locale in locales}
    for index, locale in enumerate(locales):
        fake[locale].seed_instance(seed + index + (0 if part == "tune" else 1000))
    us = fake["en_US"]
    templates = _templates(part)

    def noise(name: str) -> str:
        d = rng.randint
        makers: dict[str, Callable[[], str]] = {
            "NAME": lambda: us.name(),
            "COMPANY": lambda: us.company(),
            "JOB": lambda: us.job(),
            "CITY": lambda: us.city(),
            "ADDRESS": lambda: us.address().replace("\n", ", "),
            "INTLADDRESS": lambda: fake[rng.choice(NOISE_LOCALES)].address().replace("\n", ", "),
            "ZIP": lambda: rng.choice((us.zipcode(), us.zipcode_plus4(), fake[rng.choice(NOISE_LOCALES)].postcode())),
            "DATE": lambda: rng.choice((us.date(), us.date(pattern="%m/%d/%Y"), us.date(pattern="%d.%m.%Y"),
                                        us.date(pattern="%B %d, %Y"), us.date(pattern="%Y%m%d"),
                                        us.date(pattern="%d/%m/%y"), us.date(pattern="%Y.%m.%d"),
                                        us.date(pattern="%d-%m-%Y"), us.date(pattern="%Y/%m/%d"),
                                        us.date(pattern="%d %m %Y"))),
            "TIME": lambda: rng.choice((us.time(), us.time(pattern="%H:%M"), us.time(pattern="%I:%M %p"),
                                        us.time(pattern="%H.%M"))),
            "ISO": lambda: rng.choice((us.iso8601(), us.date_time().strftime("%Y-%m-%d %H:%M:%S"),
                                       us.date_time().strftime("%Y%m%dT%H%M%SZ"),
                                       us.date_time().strftime("%d/%m/%Y %H:%M"))),
            "YEAR": lambda: str(d(1950, 2030)),
            "YEARS": lambda: rng.choice((f"{d(1950, 1999)}-{d(2000, 2030)}", f"{d(1990, 2010)}–{d(2011, 2030)}",
                                         f"{d(1990, 2010)} - {d(2011, 2030)}")),
            "ORDER": lambda: rng.choice((f"#{d(100000, 999999)}", f"ORD-{d(2019, 2026)}-{d(100000, 999999)}",
                                         f"{d(100, 999)}-{d(1000, 9999)}-{d(100, 999)}", f"{d(10**9, 10**10 - 1)}",
                                         f"{d(100, 999)}-{d(1000000, 9999999)}-{d(1000000, 9999999)}",
                                         f"{d(10**6, 10**7)}", f"{d(1000, 9999)}-{d(1000, 9999)}",
                                         f"{d(10, 99)} {d(1000, 9999)} {d(1000, 9999)}")),
            "INVOICE": lambda: rng.choice((f"INV-{d(100, 999)}-{d(10, 99)}-{d(1000, 9999)}",
                                           f"{d(100, 999)}-{d(10, 99)}-{d(1000, 9999)}", f"INV{d(10**6, 10**7)}",
                                           f"{d(2019, 2026)}/{d(1000, 99999)}", f"{d(10**7, 10**9)}")),
            "TICKET": lambda: rng.choice((f"#{d(1000, 999999)}", f"{us.bothify('???').upper()}-{d(100, 99999)}",
                                          f"{d(2019, 2026)}-{d(10000, 999999):06}")),
            "CONTRACT": lambda: rng.choice((f"{d(100, 999)}/{d(1000, 9999)}/{d(10, 99)}",
                                            f"C-{d(10**5, 10**7)}", f"{d(10**8, 10**10)}")),
            "TRACKING": lambda: rng.choice((f"1Z{us.bothify('???######????').upper()}", str(d(10**11, 10**12)),
                                            f"{d(1000, 9999)} {d(1000, 9999)} {d(1000, 9999)}",
                                            f"{d(10**19, 10**20)}")),
            "AMOUNT": lambda: rng.choice((f"${d(1, 99999):,}.{d(0, 99):02}", f"EUR {d(1, 9999)},{d(0, 99):02}",
                                          f"{d(1, 999999):,} USD", f"{_grouped(d(1000, 10**8), rng)} €",
                                          f"£{d(1, 9999)}.{d(0, 99):02}", f"¥{d(1000, 10**7):,}",
                                          f"CHF {d(1, 99999):,}.–", f"{d(10**5, 10**8):,}.{d(0, 99):02} INR")),
            "EXPIRY": lambda: f"{d(1, 12):02}/{d(25, 31)}",
            "BADGE": lambda: str(d(10000, 99999)),
            "UUID": lambda: us.uuid4(),
            "MS": lambda: str(d(1, 5000)),
            "VERSION": lambda: rng.choice((f"{d(1, 20)}.{d(0, 20)}.{d(0, 99)}",
                                           f"{d(1, 9)}.{d(0, 9)}.{d(0, 9)}.{d(0, 999)}",
                                           f"v{d(2019, 2026)}.{d(1, 12):02}.{d(1, 28):02}",
                                           f"{d(10, 11)}.0.{d(10000, 22631)}.{d(100, 4000)}")),
            "BUILD": lambda: rng.choice((f"build {d(1000, 99999)}", f"{d(10**7, 10**8)}",
                                         us.date(pattern="%Y%m%d") + f".{d(1, 9)}")),
            "ZIP4": lambda: f"{d(10000, 99999)}-{d(1000, 9999)}",
            "CVV": lambda: str(d(100, 999)),
            "EAN": lambda: us.ean13(),
            "UPC": lambda: rng.choice((us.ean8(), str(d(10**11, 10**12)))),
            "ISBN": lambda: rng.choice((us.isbn13(), us.isbn10())),
            "IMEI": lambda: "".join(str(d(0, 9)) for _ in range(15)),
            "SERIAL": lambda: rng.choice((us.bothify("??##-####-####").upper(), str(d(10**9, 10**11)))),
            "PIN": lambda: str(d(1000, 999999)),
            "ROUTING": lambda: us.aba(),
            "ACCOUNT": lambda: rng.choice((str(d(10**7, 10**12)), f"{d(1000, 9999)} {d(1000, 9999)} {d(10, 99)}",
                                           f"{d(10**7, 10**8 - 1):08}")),
            "SORTCODE": lambda: f"{d(10, 99)}-{d(10, 99)}-{d(10, 99)}",
            "TXN": lambda: rng.choice((f"{d(10**11, 10**13)}", us.bothify("TX-########"))),
            "UNIX": lambda: str(d(1_500_000_000, 1_800_000_000)),
            "UNIXMS": lambda: str(d(1_500_000_000_000, 1_800_000_000_000)),
            "PERCENT": lambda: str(d(1, 100)),
            "LAT": lambda: str(us.latitude()),
            "LON": lambda: str(us.longitude()),
            "REF": lambda: rng.choice((f"{d(100, 999)}-{d(100, 999)}-{d(1000, 9999)}", f"REF{d(10**5, 10**8)}",
                                       f"{d(1000, 9999)}-{d(1000, 9999)}")),
            "CASE": lambda: f"{d(10**7, 10**8)}",
            "HOURS": lambda: rng.choice(("9-5", "8:00-17:30", "10 am to 6 pm", "24/7", "Mon-Fri 9:00-18:00")),
            "PART": lambda: f"{d(100, 999)}-{d(100, 999)}-{d(10, 99)}",
            "PART2": lambda: f"{d(10, 99)}-{d(1000, 9999)}-{d(100, 999)}",
            "AMOUNT2": lambda: f"${d(1, 999)}.{d(0, 99):02}",
            "QTY": lambda: str(d(1, 12)) if rng.random() < 0.5 else _grouped(d(1000, 10**6), rng),
            "BIGINT": lambda: _grouped(d(10**5, 10**9), rng),
            "AGE": lambda: str(d(18, 95)),
            "ROOM": lambda: rng.choice((str(d(100, 999)), f"{d(1, 9)}-{d(10, 99)}")),
            "FLIGHT": lambda: f"{us.bothify('??').upper()} {d(10, 9999)}",
            "GATE": lambda: f"{us.bothify('?').upper()}{d(1, 60)}",
            "BOOKING": lambda: us.bothify("??????").upper() if rng.random() < 0.5 else str(d(10**8, 10**10)),
            "PAGES": lambda: f"{d(1, 300)}-{d(301, 900)}",
            "PAGECOUNT": lambda: str(d(80, 1200)),
            "EMPID": lambda: rng.choice((f"{d(0, 999999):09}", f"E{d(10000, 99999)}",
                                         f"{d(100, 999)}-{d(1000, 9999)}")),
            "COSTCENTRE": lambda: f"{d(1000, 9999)}-{d(100, 999)}",
            "USERID": lambda: str(d(10**5, 10**10)),
            "REQID": lambda: us.hexify("^^^^^^^^-^^^^"),
            "HEX": lambda: us.sha1()[:12],
            "MEASURE": lambda: rng.choice((f"{d(1, 9999)} m", f"{d(1, 999)}.{d(0, 99)} kg",
                                           f"{_grouped(d(1000, 10**6), rng)} kg", f"{d(1, 99)}.{d(0, 9)} GHz",
                                           f"{d(1, 999)} MB")),
            "DIMENSIONS": lambda: f"{d(10, 200)} x {d(10, 200)} x {d(10, 200)} cm",
            "SCORES": lambda: ", ".join(f"{d(0, 30)}-{d(0, 30)}" for _ in range(d(2, 4))),
            "CARDLIKE": lambda: _not_luhn(rng),
            "PASSPORT": lambda: rng.choice((str(d(10**8, 10**9 - 1)), us.bothify("?########").upper(),
                                            us.bothify("??#######").upper())),
            "LICENSE": lambda: rng.choice((us.bothify("?#######").upper(), str(d(10**6, 10**9)),
                                           f"{d(100, 999)}-{d(100, 999)}-{d(100, 999)}",
                                           us.bothify("?###-####-####").upper())),
            "BANKACCT": lambda: rng.choice((str(d(10**7, 10**12)), f"{d(10**9, 10**10):010}",
                                            f"{d(10**11, 10**14)}", f"{d(1000, 9999)} {d(1000, 9999)} {d(100, 9999)}")),
            "ITIN": lambda: f"9{d(10, 99)}-{rng.choice((7, 8, 9))}{d(0, 9)}-{d(1000, 9999)}",
            "MONTH": lambda: us.month_name(),
            "ABA": lambda: us.aba(),
            "EIN": lambda: us.ein(),
            "GTIN": lambda: rng.choice((us.ean13(), us.ean8(), us.upc_a(), us.upc_e(), us.localized_ean13(),
                                        us.localized_ean8())),
            "ISBNH": lambda: rng.choice((us.isbn10(), us.isbn13())),
            "ORDINAL": lambda: rng.choice(("3rd", "12th", "21st", "2nd")),
            "DLICENSE": lambda: _fill(rng.choice(LICENSE_TUNE if part == "tune" else LICENSE_HOLDOUT), rng),
            "PADDRESS": lambda: us.parse(rng.choice(ADDRESS_TUNE if part == "tune" else ADDRESS_HOLDOUT)),
            "BBAN": lambda: rng.choice((str(us.bban()), str(d(10**7, 10**17)))),
            "SWIFT": lambda: str(us.swift()),
            "PLATE": lambda: str(us.license_plate()),
            "NUMAMOUNT": lambda: rng.choice((f"{d(1, 99999)}.{d(0, 99):02}", f"{d(1000, 999999):,}.{d(0, 99):02}",
                                             f"{d(1, 9999)},{d(0, 99):02}")),
        }
        return makers[name]()

    labelled: dict[str, tuple[str, Callable[[], str]]] = {
        "EMAIL": ("EMAIL_ADDRESS", lambda: rng.choice((us.email(), us.company_email(), us.free_email(),
                                                        fake[rng.choice(locales)].email()))),
        "PHONE": ("PHONE_NUMBER", lambda: _phone(fake, rng, part)),
        "SSN": ("US_SSN", lambda: _ssn(us, rng)),
        "CARD": ("CREDIT_CARD", lambda: _card(us, rng)),
        "IBAN": ("IBAN_CODE", lambda: _iban(fake, rng)),
        "IP": ("IP_ADDRESS", lambda: us.ipv4() if rng.random() < 0.7 else us.ipv6()),
    }
    placeholder = re.compile(r"\{([A-Z]+?)([0-9]?)\}")
    out = []
    for _ in range(count):
        template = rng.choice(templates)
        text, spans = "", []
        position = 0
        for match in placeholder.finditer(template):
            text += template[position:match.start()]
            position = match.end()
            name, number = match.groups()
            if name in labelled:
                kind, make = labelled[name]
                value = make()
                spans.append({"entity_type": kind, "entity_value": value, "start_position": len(text),
                              "end_position": len(text) + len(value)})
            else:
                value = noise(name + number if name + number in ("PART2", "AMOUNT2") else name)
            text += value
        text += template[position:]
        out.append({"full_text": text, "spans": spans, "template": template})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--count", type=int)
    parser.add_argument("--part", choices=PARTS, default="tune")
    parser.add_argument("--out", type=Path, help="write here (default: stdout)")
    args = parser.parse_args()
    data = json.dumps(generate(args.seed, args.count, args.part), ensure_ascii=False, indent=1)
    if args.out:
        args.out.write_text(data)
    else:
        sys.stdout.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
