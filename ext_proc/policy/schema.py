"""The policy file's shape: strict pydantic models of the YAML, and nothing else.

Every model forbids unknown keys and coerces nothing (``strict=True``): ``443`` is not a cluster
name and ``yes`` is not a team name (YAML reads them as a number and a boolean). Whatever needs
more than one entry to decide (does a model's provider exist, is a key listed twice) is checked
by :mod:`ext_proc.policy.compile`, which also turns pydantic's errors into file, line and field.
``tollway policy schema`` prints :class:`PolicySpec`'s JSON Schema for editors.

Names (of providers, models, teams, virtual keys, and Envoy clusters) are 1 to 128 characters:
letters, digits and ``. - _ : /``, starting with a letter or a digit. That keeps them safe in
logs, metrics labels, headers and the paths of error messages.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .compiled import PROVIDER_KINDS

API_VERSION = "tollway/v1"
MAX_TARGETS = 8  # the targets of an alias at most: a fallback chain is at most this many tries

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
# A budget's or rate limit's name: a name without '/', which separates the parts of its counters'
# names (budget/NAME/UNIT/MEMBER/WINDOW: budget 'a' of member 'usd/m' and budget 'a/usd' of 'm' were one).
LIMIT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
ENV_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
TEXT_PATTERN = r"^\S(.*\S)?$"  # non-empty, no surrounding whitespace
URL_PATTERN = r"^https?://\S+$"
VERSION_PATTERN = r"^\S+$"
MODEL_REF_PATTERN = r"^(\*|[A-Za-z0-9][A-Za-z0-9._:/-]{0,127})$"  # a name or "*"
CLUSTER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/|-]{0,127}$"  # a name, or Istio's outbound|80||api.openai.com
# A price or an amount as an exact decimal string (USD): "2.50", not 2.5 (a float).
DECIMAL_PATTERN = r"^[0-9]{1,9}(\.[0-9]{1,9})?$"
TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+/-]{0,63}$"  # an IANA name's characters (compile.py checks the name)
LABEL_PATTERN = r"^[A-Z][A-Z0-9_]{0,30}$"  # a placeholder's label: [LABEL_1]

# What each pattern means, in the words an error message uses (compile.py reads this).
PATTERN_MEANINGS = {
    NAME_PATTERN: "must be 1-128 letters, digits or '.-_:/', starting with a letter or digit",
    LIMIT_NAME_PATTERN: "must be 1-128 letters, digits or '.-_:', starting with a letter or digit (no '/': it "
                        "separates the parts of the limit's counter names)",
    SHA256_PATTERN: "must be 64 lowercase hex characters (the sha256 of the key; see 'tollway keys create')",
    ENV_PATTERN: "must be an environment variable name (letters, digits, '_'; not starting with a digit)",
    TEXT_PATTERN: "must not be empty or start or end with whitespace",
    URL_PATTERN: "must be an http:// or https:// URL",
    VERSION_PATTERN: "must be a non-empty version string without spaces",
    MODEL_REF_PATTERN: 'must be a model name, an alias, or "*"',
    CLUSTER_PATTERN: "must be 1-128 letters, digits or '.-_:/|', starting with a letter or digit",
    DECIMAL_PATTERN: 'must be an amount in USD like "2.50": up to 9 digits, then a point and up to 9 more; no '
                     "sign, thousands separator or currency symbol",
    TIMEZONE_PATTERN: "must be an IANA time zone name, e.g. Europe/Berlin or UTC (no spaces)",
    LABEL_PATTERN: "must be 1-31 capital letters, digits or '_', starting with a letter (e.g. TICKET)",
}

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
LimitName = Annotated[str, StringConstraints(pattern=LIMIT_NAME_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
EnvName = Annotated[str, StringConstraints(pattern=ENV_PATTERN)]
Text = Annotated[str, StringConstraints(pattern=TEXT_PATTERN)]
_DNS_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
# A trailing dot (an absolute name: Kubernetes' way around ndots search domains) is allowed.
_DNS_NAME = re.compile(rf"^(?=.{{1,254}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?$")


def _reachable(url: str) -> str:
    """An http(s) URL parsed whole, as Envoy's cluster (its host, its port) and the Host header take
    it: an error here, with its place in the file, rather than a reload failing on it later."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unbalanced bracket, or not an IP address inside the brackets
        raise PydanticCustomError(
            "url_host", "has a malformed host (an IPv6 address goes in brackets: http://[::1]:8000)") from None
    host, netloc = parts.hostname or "", parts.netloc
    if parts.username is not None or parts.password is not None:
        raise PydanticCustomError("url_user", "must not hold a user name or password (a provider's key goes "
                                              "in 'credential')")
    if not host:
        raise PydanticCustomError("url_host", "has no host (http://HOST or http://HOST:PORT)")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or netloc.endswith(":"):
        written = netloc.rsplit("]", 1)[-1].rpartition(":")[2]
        if len(written) > 8:  # a key written there (a typo such as 80O0 is shown)
            raise PydanticCustomError("url_port", "has a port that is not a number from 1 to 65535")
        raise PydanticCustomError("url_port", "has port '{port}': a port is a number from 1 to 65535",
                                  {"port": written})
    if netloc.startswith("["):  # no zone id (fe80::1%eth0): Envoy takes none in a cluster's address
        valid = "%" not in host and _is_address(host, ipaddress.IPv6Address)
    else:  # a name's last label is never all digits: 300.1.1.1 is a mistyped address, not a name
        valid = _is_address(host, ipaddress.IPv4Address) or (
            _DNS_NAME.match(host) is not None and not host.rstrip(".").rpartition(".")[2].isdigit())
    if not valid:
        raise PydanticCustomError("url_host", "has a malformed host '{host}' (a DNS name, an IPv4 address, or an "
                                              "IPv6 address in brackets)", {"host": host})
    return url


def _is_address(host: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        kind(host)
    except ValueError:
        return False
    return True


Url = Annotated[str, StringConstraints(pattern=URL_PATTERN), AfterValidator(_reachable)]
Version = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
ModelRef = Annotated[str, StringConstraints(pattern=MODEL_REF_PATTERN)]
Dec = Annotated[str, StringConstraints(pattern=DECIMAL_PATTERN)]
Count = Annotated[int, Field(ge=1, le=100_000_000)]
ProviderKind = Literal["openai", "anthropic", "azure-openai", "openai-compatible"]
assert get_args(ProviderKind) == PROVIDER_KINDS, "schema and compiled.PROVIDER_KINDS disagree"


class Strict(BaseModel):
    """Base of every policy model: unknown keys are errors, no type coercion, immutable.

    A key written with no value (``credential:``) is an error rather than "use the default":
    a half-written entry must not silently mean "no credential".
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_empty_values(cls, value: object) -> object:
        if value is None:
            raise PydanticCustomError("empty", "has no value (give one, or remove the line for the default)")
        return value


class CredentialSpec(Strict):
    """Where the provider's API key comes from: exactly one of ``env`` or ``file``."""

    env: EnvName | None = Field(None, description="environment variable holding the key")
    file: Text | None = Field(None, description="file holding the key, e.g. a mounted Kubernetes secret")

    @model_validator(mode="after")
    def _exactly_one(self) -> CredentialSpec:
        if (self.env is None) == (self.file is None):
            raise PydanticCustomError("credential", "needs exactly one of 'env' or 'file'")
        return self


class ProviderSpec(Strict):
    """An upstream LLM API."""

    kind: ProviderKind = Field(description="the wire format and credential header")
    cluster: Annotated[str, StringConstraints(pattern=CLUSTER_PATTERN)] | None = Field(
        None, description="the Envoy cluster that reaches it (default: the provider's name; in Istio mode the "
                          "cluster of its ServiceEntry, e.g. outbound|80||api.openai.com); providers sharing one "
                          "reach the same endpoint")
    endpoint: Url | None = Field(
        None, description="the base URL the provider's Envoy cluster reaches, as the SDKs take it: no API path "
                          "(/chat/completions), query string or fragment (default for openai and anthropic: "
                          "their public API; azure-openai and openai-compatible providers need one to be in a "
                          "fallback chain)")
    credential: CredentialSpec | None = Field(None, description="omit when no key is injected (a local server)")
    anthropic_version: Version | None = Field(None, description="kind anthropic only (default 2023-06-01)")
    api_version: Version | None = Field(None, description="kind azure-openai only, and required there")
    stored_responses: bool = Field(
        False, description="let Responses clients refer to responses the provider stores ('previous_response_id', "
                           "'conversation'): only when this provider's key serves one team, since anyone holding "
                           "the key reads what it stored (kinds openai and azure-openai)")


class PriceSpec(Strict):
    """Negotiated or self-hosted prices in USD per million tokens, quoted: "2.50" (exact decimals)."""

    input: Dec = Field(description="uncached input tokens")
    output: Dec = Field(description="output tokens (reasoning tokens included)")
    cache_read: Dec | None = Field(None, description="cached input tokens (default: the input price)")
    cache_write: Dec | None = Field(None, description="cache-creation tokens (default: the input price)")
    cache_write_1h: Dec | None = Field(None, description="Anthropic's 1-hour cache writes (default: cache_write)")
    input_audio: Dec | None = Field(None, description="audio input tokens (default: the input price)")
    output_audio: Dec | None = Field(None, description="audio output tokens (default: the output price)")


class ModelSpec(Strict):
    """A public model name, the provider that serves it and its name there."""

    provider: Name = Field(description="a key of 'providers'")
    model: Text | None = Field(
        None, description="the provider's model name (default: the public name); azure-openai: the deployment"
    )
    aliases: list[Name] = Field(default_factory=list, description="other public names for this model")
    price: PriceSpec | None = Field(
        None, description="overrides the price table for this model (negotiated or self-hosted prices)"
    )
    context_window: Count | None = Field(
        None, description="prompt tokens the model accepts (unknown: never skipped for size)"
    )
    max_output_tokens: Count | None = Field(
        None, description="the model's output limit: what a request that sets none is claimed for, and the "
                          "max_tokens sent to Anthropic when an OpenAI client gives none "
                          "(default shared_state.default_output_tokens)"
    )


class KeySpec(Strict):
    """A virtual key, stored only as the sha256 of its secret."""

    id: Name = Field(description="names the key in logs and records; unique within the team")
    sha256: Sha256 = Field(description="sha256 hex of the key (see 'tollway keys create')")


class TeamSpec(Strict):
    """Who may call, and which models they may use."""

    keys: list[KeySpec] = Field(default_factory=list, description="virtual keys of this team")
    workloads: list[Text] = Field(
        default_factory=list, description="workload identities (e.g. SPIFFE IDs) calling through the sidecar"
    )
    models: list[ModelRef] = Field(description='public model names or aliases; ["*"] for every model')


Period = Literal["day", "month"]
Enforce = Literal["hard", "soft"]
Percent = Annotated[int, Field(ge=1, le=1000)]
TimeZone = Annotated[str, StringConstraints(pattern=TIMEZONE_PATTERN)]


class ScopeSpec(Strict):
    """Whose requests a limit counts: exactly one of ``team``, ``key`` or ``model``, or ``team``
    with ``key`` (that team's key).

    A name counts that team, virtual key (its id; with ``team`` when teams share the id) or model
    (a public name or an alias: any name of the model counts); ``"*"`` gives every team, key or
    model its own counter with the same limit.
    """

    team: ModelRef | None = Field(None, description='a team name, or "*" for each team')
    key: ModelRef | None = Field(None, description='a virtual key id (of the team, if named), or "*" for each key')
    model: ModelRef | None = Field(None, description='a public model name or alias, or "*" for each model')

    @model_validator(mode="after")
    def _exactly_one(self) -> ScopeSpec:
        if self.team is not None and self.key is not None and self.model is None:
            if "*" in (self.team, self.key):
                raise PydanticCustomError("scope", "'team' with 'key' names one key of one team: neither can be "
                                                   "\"*\" (key: \"*\" alone gives each key its own counter)")
        elif sum(value is not None for value in (self.team, self.key, self.model)) != 1:
            raise PydanticCustomError("scope", "needs exactly one of 'team', 'key' or 'model' (or 'team' with "
                                               "'key': that team's key)")
        return self


class BudgetSpec(ScopeSpec):
    """Spending allowed per day or calendar month: in USD, in tokens, or both."""

    usd: Dec | None = Field(None, description='USD per period, quoted: "500.00" (at most 6 decimals; "0": a hard '
                                        'budget refuses every request, a soft one alerts on any spend)')
    tokens: Annotated[int, Field(ge=1, le=10**15)] | None = Field(None, description="input + output tokens per period")
    period: Period = Field(description="day | month (calendar, in 'timezone')")
    timezone: TimeZone = Field("UTC", description="IANA time zone the period turns over in (default UTC)")
    enforce: Enforce = Field("hard", description="hard: refuse requests past the budget; soft: alerts only")
    alerts: list[Percent] = Field(
        default_factory=list, description="percentages of the budget that raise an alert: log, metric, webhook"
    )
    webhook: Url | None = Field(None, description="POSTed a JSON event at each alert (retried, never blocking)")

    @model_validator(mode="after")
    def _some_amount(self) -> BudgetSpec:
        if self.usd is None and self.tokens is None:
            raise PydanticCustomError("budget", "needs 'usd', 'tokens' or both")
        return self


class RateLimitSpec(ScopeSpec):
    """Requests and tokens per minute, and requests in flight at once."""

    requests_per_minute: Count | None = Field(None, description="requests per calendar minute")
    tokens_per_minute: Count | None = Field(None, description="input + output tokens per calendar minute")
    concurrent: Count | None = Field(None, description="requests in flight at once")

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimitSpec:
        if self.requests_per_minute is None and self.tokens_per_minute is None and self.concurrent is None:
            raise PydanticCustomError(
                "rate_limit", "needs 'requests_per_minute', 'tokens_per_minute' or 'concurrent'")
        return self


OnUnavailable = Literal["closed", "open"]


class SharedStateSpec(Strict):
    """What budgets and rate limits do when the shared store (Redis) does not answer."""

    on_unavailable: OnUnavailable = Field(
        "closed", description="closed: refuse with a 503; open: enforce on this process's own counters"
    )
    default_output_tokens: Count = Field(
        4096, description="output tokens reserved for a request that sets no limit and whose model has none, "
                          "and the max_tokens sent to Anthropic for it"
    )


class CustomDetectorSpec(Strict):
    """A detector of the policy's own: a regular expression, or a list of words and phrases."""

    pattern: Text | None = Field(default=None,
                                 description="a regular expression (Hyperscan/PCRE syntax, no look-around)")
    words: list[Text] | None = Field(default=None, min_length=1,
                                     description="words or phrases, matched whole and in any case")
    caseless: bool = Field(default=False, description="pattern only: match in any case")
    max_length: Annotated[int, Field(ge=1, le=8192)] | None = Field(
        default=None, description="the longest match, when the pattern has unbounded repetition (+, *)")
    label: Annotated[str, StringConstraints(pattern=LABEL_PATTERN)] | None = Field(
        default=None, description="the placeholder's label, e.g. TICKET for [TICKET_1] (default: the name in capitals)")

    @model_validator(mode="after")
    def _exactly_one(self) -> CustomDetectorSpec:
        if (self.pattern is None) == (self.words is None):
            raise PydanticCustomError("detector", "needs exactly one of 'pattern' or 'words'")
        return self


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class ClassifierSpec(Strict):
    """An external prompt-injection classifier: POST {"texts": [...]} -> {"scores": [...]} (or {"score": x})."""

    url: Url = Field(description="the classifier's endpoint")
    timeout_ms: Annotated[int, Field(ge=1, le=10_000)] = Field(default=300,
                                                               description="how long a request may wait for it")
    threshold: Fraction = Field(default=0.5, description="the score (0-1) from which a text is an injection")
    fail: Literal["open", "closed"] = Field(
        default="closed",
        description="when it does not answer in time or fails: closed blocks, open lets the request through")


class InjectionSpec(Strict):
    """Prompt-injection scoring of user and tool text (the detector ``prompt_injection`` in rules)."""

    threshold: Fraction = Field(default=0.5,
                                description="the built-in score (0-1) from which a text is an injection")
    classifier: ClassifierSpec | None = Field(default=None, description="an external classifier asked as well")
    instructions: bool = Field(default=True, description="score user and tool text against the request's system "
                               "prompt: asking for what it keeps secret, using what it forbids, asking for "
                               "another language than the one it fixes")


GuardrailAction = Literal["redact", "mask", "pseudonymise", "block", "log"]


class GuardrailRuleSpec(Strict):
    """A guardrail: what it looks for, what it does, where and for whom."""

    name: Name = Field(description="the guardrail's name in records and reports (e.g. pii)")
    detectors: list[Name] = Field(min_length=1, description="detectors or groups: pii, credentials, prompt_injection, "
                                  "kept_secret (answers: values the system prompt keeps), email, phone, "
                                  "credit_card, iban, us_ssn, ip_address, secret_assignment and url_password (prompts: "
                                  "what users paste), ... or a custom detector")
    action: GuardrailAction = Field(description="redact ([EMAIL_1]), mask, pseudonymise (the answer gets the values "
                                    "back), block (4xx, the provider never asked), log")
    direction: Literal["request", "response", "both"] = Field(default="both", description="prompts, answers, or both")
    # An empty list would apply the rule to nobody: refused, like an empty list of detectors.
    teams: list[ModelRef] = Field(default_factory=lambda: ["*"], min_length=1, description='team names, or ["*"]')
    models: list[ModelRef] = Field(default_factory=lambda: ["*"], min_length=1,
                                   description='public model names or aliases, or ["*"]')


class GuardrailsSpec(Strict):
    """Content checks on prompts and answers: rules read top to bottom, the first covering a detector
    for the caller's team, the model and the direction decides."""

    custom: dict[Name, CustomDetectorSpec] = Field(default_factory=dict, description="name -> your own detector")
    injection: InjectionSpec = Field(default_factory=InjectionSpec, description="prompt-injection scoring")
    rules: list[GuardrailRuleSpec] = Field(default_factory=list, description="the guardrails, in order")


class TelemetrySpec(Strict):
    """What the request traces may carry (metrics and records never carry prompts or answers)."""

    trace_content: bool = Field(
        False, description="put prompts and answers in each request's span (gen_ai.input.messages, "
                           "gen_ai.output.messages), redacted by every built-in detector; off by default",
    )


class TargetSpec(Strict):
    """One provider model an alias may be served by."""

    provider: Name = Field(description="a key of 'providers'")
    model: Text = Field(description="the provider's model name, sent as written (azure-openai: the deployment)")
    priority: Annotated[int, Field(ge=0, le=1000)] | None = Field(
        None, description="lower is tried first (default: the position in the list)"
    )
    weight: Annotated[int, Field(ge=0, le=1_000_000)] | None = Field(
        None, description="strategy weighted: the share of first attempts (required there, 0 = fallback only)"
    )
    context_window: Count | None = Field(
        None, description="prompt tokens it accepts (default: the 'models' entry for the same provider and model)"
    )
    max_output_tokens: Count | None = Field(None, description="the output limit: claimed, and max_tokens for "
                                                              "Anthropic, when the client gives none")
    price: PriceSpec | None = Field(None, description="overrides the price table for this target")


Strategy = Literal["priority", "weighted"]


class PlanSpec(Strict):
    """How an alias is served: the targets and the order they are tried in."""

    strategy: Strategy = Field(
        "priority",
        description="priority: always the first target, the others on failure; "
        "weighted: the first attempt split by weight, the others by priority on failure",
    )
    targets: list[TargetSpec] = Field(min_length=1, max_length=MAX_TARGETS, description="the provider models, in order")


class AliasSpec(PlanSpec):
    """A public model name served by one or more provider models, with fallback."""

    teams: dict[Name, PlanSpec] = Field(default_factory=dict, description="team name -> this team's own plan (its "
                                        "own strategy: the alias's is not inherited; it applies once the team lists "
                                        "the alias)")


class RoutingSpec(Strict):
    """Model aliases: public names routed to provider models, with weights and fallback."""

    aliases: dict[Name, AliasSpec] = Field(default_factory=dict, description="public name -> how it is served")


RESERVED_SECTIONS = ("guardrails",)


class PolicySpec(Strict):
    """A Tollway policy file (apiVersion tollway/v1)."""

    model_config = ConfigDict(title="Tollway policy")

    api_version: Literal["tollway/v1"] = Field(alias="apiVersion", description="always tollway/v1")
    providers: dict[Name, ProviderSpec] = Field(default_factory=dict, description="name -> upstream")
    models: dict[Name, ModelSpec] = Field(default_factory=dict, description="public model name -> model")
    teams: dict[Name, TeamSpec] = Field(default_factory=dict, description="team name -> team")
    budgets: dict[LimitName, BudgetSpec] = Field(default_factory=dict, description="name -> spending limit")
    rate_limits: dict[LimitName, RateLimitSpec] = Field(default_factory=dict, description="name -> rate limit")
    shared_state: SharedStateSpec = Field(
        default_factory=lambda: SharedStateSpec.model_validate({}),
        description="budgets and rate limits when the shared store is down",
    )
    guardrails: GuardrailsSpec = Field(default_factory=GuardrailsSpec, description="checks on prompts and answers")
    routing: RoutingSpec = Field(default_factory=RoutingSpec, description="model aliases, fallback, weights")
    telemetry: TelemetrySpec = Field(default_factory=lambda: TelemetrySpec.model_validate({}),
                                     description="what request traces may carry")


def json_schema() -> dict[str, Any]:
    """:class:`PolicySpec`'s JSON Schema, as editors (yaml-language-server) read it.

    Optional fields are typed ``X | None`` in Python, but an explicit null is an error in the file
    (see :class:`Strict`), so the ``null`` alternatives are dropped here.
    """
    schema = _drop_null(PolicySpec.model_json_schema(by_alias=True))
    assert isinstance(schema, dict)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _drop_null(node: Any) -> Any:
    if isinstance(node, list):
        return [_drop_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _drop_null(value) for key, value in node.items()}
    alternatives = out.get("anyOf")
    if isinstance(alternatives, list):
        kept = [alt for alt in alternatives if alt != {"type": "null"}]
        if len(kept) == 1 and len(kept) < len(alternatives):
            del out["anyOf"]
            out = {**kept[0], **out}
    if out.get("default", 0) is None:
        del out["default"]
    return out
