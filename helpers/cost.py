"""What a query costs: API prices from `genai-prices` against local energy and hardware.

API prices come from the `genai-prices` package (dated, per provider, offline); local cost is
computed from assumptions the learner states (watts, electricity price, hardware price,
lifetime, utilisation). Nothing here is a hand-written price.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from functools import cache

import pandas as pd

from .errors import BadInput
from .validate import check_int, check_number

MTOK = 1_000_000
HOURS_PER_YEAR = 365.25 * 24
DAYS_PER_MONTH = 365.25 / 12
SECONDS_PER_KWH = 3_600_000  # joules in one kWh: watts x seconds / this = kWh

#: A default line-up for the 1M-query table: the seed's GPT-4 Turbo, then current cheaper models.
TABLE_MODELS = ("gpt-4-turbo", "gpt-4o", "gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash")


# --------------------------------------------------------------------------- API prices


@dataclass(frozen=True)
class ApiPrice:
    """USD per million tokens for one model at one provider, with where the figure came from.

    `input_tiers`/`output_tiers` hold (threshold, price) pairs: a request whose input exceeds
    the threshold pays that price for all its tokens (long-context pricing, e.g. Gemini 1.5).
    """

    provider: str
    model: str
    input_per_mtok: float
    output_per_mtok: float
    source: str
    valid_from: date | None = None
    input_tiers: tuple[tuple[int, float], ...] = ()
    output_tiers: tuple[tuple[int, float], ...] = ()


@cache
def _snapshot():
    from genai_prices.data_snapshot import get_snapshot

    return get_snapshot()


def _genai_prices_version() -> str:
    import genai_prices

    return genai_prices.__version__


def _all_model_ids(provider_id: str | None = None) -> list[str]:
    """Every model id genai-prices knows (for one provider, or all)."""
    return sorted({m.id for p in _snapshot().providers if provider_id is None or p.id == provider_id for m in p.models})


def _close_names(name: str, provider_id: str | None = None, n: int = 5) -> list[str]:
    """Model ids that look like `name`, to suggest when a lookup fails."""
    ids = _all_model_ids(provider_id) or _all_model_ids()
    close = difflib.get_close_matches(name.lower(), ids, n=n, cutoff=0.5)
    return close or [i for i in ids if name.lower().split("-")[0] in i][:n]


def _split_tiers(value) -> tuple[float, tuple[tuple[int, float], ...]]:
    """A genai-prices price (Decimal or TieredPrices) as (base price, tiers)."""
    from genai_prices.types import TieredPrices

    if isinstance(value, TieredPrices):
        return float(value.base), tuple((int(t.start), float(t.price)) for t in value.tiers)
    return float(value), ()


def _active_start_date(model, when: datetime) -> date | None:
    """Start date of the standard price in force at `when`, if the data dates it."""
    from genai_prices.types import ModelPrice, StartDateConstraint

    if isinstance(model.prices, ModelPrice):
        return None
    for conditional in reversed(model.prices):  # genai-prices: the last active price wins
        constraint = conditional.constraint
        if constraint is None or constraint.active(when):
            return constraint.start_date if isinstance(constraint, StartDateConstraint) else None
    return None


def api_price(model: str, provider: str | None = None, when: datetime | None = None) -> ApiPrice:
    """Standard (non-batch, uncached) per-token prices of `model` from genai-prices' bundled data.

    `when` picks the price in force on that date (default: now, UTC); pass a fixed date for
    reproducible tables. `provider` is a genai-prices provider id ("openai", "anthropic", ...).
    """
    if not isinstance(model, str) or not model.strip():
        raise BadInput(f"model must be a non-empty string, got {model!r}", f"try one of: {', '.join(TABLE_MODELS)}")
    when = when or datetime.now(timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    snap = _snapshot()
    try:
        prov, info = snap.find_provider_model(model.strip(), None, provider, None)
    except LookupError as exc:
        if provider is not None and not any(p.id == provider for p in snap.providers):
            close = difflib.get_close_matches(provider.lower(), [p.id for p in snap.providers], n=5)
            raise BadInput(
                f"genai-prices knows no provider {provider!r}",
                f"use one of: {', '.join(close or ['openai', 'anthropic', 'google'])}"
                " - or provider=None to guess it from the model name",
            ) from exc
        close = _close_names(model, provider)
        raise BadInput(
            f"genai-prices {_genai_prices_version()} has no price for model {model!r}"
            + (f" at provider {provider!r}" if provider else ""),
            f"close names: {', '.join(close) or '(none)'}; "
            "check the spelling, or pass provider='openai' / 'anthropic' / 'google'",
        ) from exc
    prices = info.get_prices(when)
    if prices.input_mtok is None or prices.output_mtok is None:
        raise BadInput(
            f"{prov.id}/{info.id} is not priced per input and output token in genai-prices",
            "pick a text model (e.g. gpt-4o-mini)",
        )
    input_base, input_tiers = _split_tiers(prices.input_mtok)
    output_base, output_tiers = _split_tiers(prices.output_mtok)
    since = _active_start_date(info, when)
    ref = (prov.pricing_urls or [""])[0]
    source = (
        f"genai-prices {_genai_prices_version()} (bundled data), {prov.id}/{info.id}: "
        f"standard price in force on {when:%Y-%m-%d}"
        + (f", valid since {since:%Y-%m-%d}" if since else ", no start date recorded")
        + (", long-context tiers apply" if input_tiers or output_tiers else "")
        + (", model marked deprecated" if info.deprecated else "")
        + (f"; provider's pricing page {ref}" if ref else "")
    )
    return ApiPrice(
        provider=prov.id,
        model=info.id,
        input_per_mtok=input_base,
        output_per_mtok=output_base,
        source=source,
        valid_from=since,
        input_tiers=input_tiers,
        output_tiers=output_tiers,
    )


def prices_data_info(when: datetime | None = None) -> str:
    """Which genai-prices version is in use and the newest dated price change up to `when`."""
    from genai_prices.types import StartDateConstraint

    when = when or datetime.now(timezone.utc)
    dates = []
    for prov in _snapshot().providers:
        for info in prov.models:
            conds = list(info.prices) if isinstance(info.prices, list) else []
            for item in conds + list(info.price_variants or []):
                if isinstance(item.constraint, StartDateConstraint) and item.constraint.active(when):
                    dates.append(item.constraint.start_date)
    newest = max(dates).isoformat() if dates else "none"
    return (
        f"genai-prices {_genai_prices_version()}: {len(_snapshot().providers)} providers, "
        f"newest dated price change on or before {when:%Y-%m-%d}: {newest}"
    )


def _tiered(base: float, tiers: tuple[tuple[int, float], ...], input_tokens: int) -> float:
    """The price that applies for a request with `input_tokens` (genai-prices' tier rule)."""
    for start, price in reversed(tiers):
        if input_tokens > start:
            return price
    return base


def _check_tokens(**counts: float) -> None:
    for name, value in counts.items():
        if value is None or value < 0 or not math.isfinite(value):
            raise BadInput(
                f"{name} must be a finite number >= 0, got {value!r}",
                "pass token counts per query, e.g. input_tokens=500, output_tokens=300",
            )


def query_cost_api(price: ApiPrice, input_tokens: int, output_tokens: int) -> float:
    """USD for one call: tokens x price per million tokens, input and output priced apart."""
    _check_tokens(input_tokens=input_tokens, output_tokens=output_tokens)
    rate_in = _tiered(price.input_per_mtok, price.input_tiers, input_tokens)
    rate_out = _tiered(price.output_per_mtok, price.output_tiers, input_tokens)
    return (input_tokens * rate_in + output_tokens * rate_out) / MTOK


# --------------------------------------------------------------------------- local cost


@dataclass(frozen=True)
class LocalAssumptions:
    """Everything the local cost depends on, stated by the learner (no hidden defaults for money).

    watts: power drawn while generating. price_per_kwh: electricity, USD. hardware_price: USD
    paid for the machine (or the part of it you attribute to inference). lifetime_years: how
    long before it is replaced. hours_per_day: hours it is switched on. utilisation: share of
    those hours spent generating (0..1]. idle_watts: draw while on but idle (0 = ignore).
    """

    watts: float
    price_per_kwh: float
    hardware_price: float
    lifetime_years: float
    utilisation: float
    hours_per_day: float = 24.0
    idle_watts: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "watts",
            "price_per_kwh",
            "hardware_price",
            "lifetime_years",
            "utilisation",
            "hours_per_day",
            "idle_watts",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise BadInput(
                    f"LocalAssumptions.{name} must be a finite number, got {value!r}",
                    "state every assumption as a plain number (USD, watts, years, 0..1)",
                )
        checks = {
            "watts": (self.watts >= 0, "the draw under load in watts, measured or from the spec sheet"),
            "price_per_kwh": (self.price_per_kwh >= 0, "your tariff in USD per kWh"),
            "hardware_price": (self.hardware_price >= 0, "USD, 0 if already paid off"),
            "lifetime_years": (self.lifetime_years > 0, "e.g. 3 years"),
            "utilisation": (0 < self.utilisation <= 1, "share of switched-on hours spent generating, in (0, 1]"),
            "hours_per_day": (0 < self.hours_per_day <= 24, "in (0, 24]"),
            "idle_watts": (0 <= self.idle_watts <= self.watts, "0 to ignore idle draw; never more than `watts`"),
        }
        for name, (ok, hint) in checks.items():
            if not ok:
                raise BadInput(f"LocalAssumptions.{name}={getattr(self, name)!r} is out of range", hint)

    @property
    def lifetime_hours(self) -> float:
        """Hours the machine is switched on over its life."""
        return self.lifetime_years * HOURS_PER_YEAR * self.hours_per_day / 24

    @property
    def hardware_per_month(self) -> float:
        """USD of hardware written off each month, busy or not."""
        return self.hardware_price / (self.lifetime_years * 12)


@dataclass(frozen=True)
class LocalCost:
    """USD per million generated tokens on local hardware, split into energy and hardware."""

    tokens_per_s: float
    energy_per_mtok: float
    hardware_per_mtok: float
    kwh_per_mtok: float
    busy_hours_per_mtok: float

    @property
    def total_per_mtok(self) -> float:
        return self.energy_per_mtok + self.hardware_per_mtok


def _per_busy_second(a: LocalAssumptions) -> tuple[float, float, float]:
    """(energy USD, hardware USD, kWh) for one second of generation under assumptions `a`."""
    idle_share = (1 - a.utilisation) / a.utilisation  # idle seconds carried by each busy second
    kwh = (a.watts + a.idle_watts * idle_share) / SECONDS_PER_KWH
    hardware = a.hardware_price / (a.lifetime_hours * 3600 * a.utilisation)
    return kwh * a.price_per_kwh, hardware, kwh


def _check_tps(tokens_per_s: float, what: str = "tokens_per_s") -> None:
    check_number(
        what, tokens_per_s, 0, None, "measure it first (lesson 03): eval_count / eval_duration * 1e9", above=True
    )


def local_cost_per_mtok(tokens_per_s: float, assumptions: LocalAssumptions) -> LocalCost:
    """USD per million generated tokens at `tokens_per_s`.

    energy = watts x seconds per token x price per kWh; hardware = price / (lifetime hours x
    utilisation) x seconds per token. Low utilisation makes each busy second carry idle time.
    """
    _check_tps(tokens_per_s)
    energy_s, hardware_s, kwh_s = _per_busy_second(assumptions)
    seconds = MTOK / tokens_per_s
    return LocalCost(
        tokens_per_s=float(tokens_per_s),
        energy_per_mtok=energy_s * seconds,
        hardware_per_mtok=hardware_s * seconds,
        kwh_per_mtok=kwh_s * seconds,
        busy_hours_per_mtok=seconds / 3600,
    )


@dataclass(frozen=True)
class LocalRun:
    """A local model as measured: generation speed (and optionally prompt speed) on a machine.

    Prompt processing is usually many times faster than generation; when `prompt_tokens_per_s`
    is None the prompt's time is ignored (the cost is then a lower bound).
    """

    name: str
    tokens_per_s: float
    assumptions: LocalAssumptions
    prompt_tokens_per_s: float | None = None

    def __post_init__(self) -> None:
        _check_tps(self.tokens_per_s)
        if self.prompt_tokens_per_s is not None:
            _check_tps(self.prompt_tokens_per_s, "prompt_tokens_per_s")

    def seconds_per_query(self, input_tokens: int, output_tokens: int) -> float:
        """Busy seconds for one query: generation plus (if known) prompt processing."""
        _check_tokens(input_tokens=input_tokens, output_tokens=output_tokens)
        prompt = input_tokens / self.prompt_tokens_per_s if self.prompt_tokens_per_s else 0.0
        return prompt + output_tokens / self.tokens_per_s

    def cost_per_query(self, input_tokens: int, output_tokens: int) -> tuple[float, float]:
        """(energy USD, hardware USD) for one query at the stated utilisation."""
        energy_s, hardware_s, _ = _per_busy_second(self.assumptions)
        seconds = self.seconds_per_query(input_tokens, output_tokens)
        return energy_s * seconds, hardware_s * seconds


# --------------------------------------------------------------------------- the 1M-query table


def million_queries_table(
    models: Iterable[str | ApiPrice],
    input_tokens: int,
    output_tokens: int,
    n_queries: int = 1_000_000,
    local: Sequence[LocalRun] | None = None,
    when: datetime | None = None,
) -> pd.DataFrame:
    """Cost of `n_queries` queries of fixed size, per API model and per local run.

    Rebuilds the seed's "1M queries: GPT-4 Turbo $30,000 / cloud GPU $500 / self-hosted $0"
    from stated token counts. Local rows also show the busy machine-days one box needs, which
    is what "$0 after hardware" leaves out. Money is rounded to cents, so the table is stable.
    """
    _check_tokens(input_tokens=input_tokens, output_tokens=output_tokens)
    n_queries = check_int("n_queries", n_queries, 1, None, "e.g. 1_000_000")
    rows = []
    for item in models:
        price = item if isinstance(item, ApiPrice) else api_price(item, when=when)
        per_query = query_cost_api(price, input_tokens, output_tokens)
        rows.append(
            {
                "option": price.model,
                "kind": "api",
                "provider": price.provider,
                "input_usd_per_mtok": price.input_per_mtok,
                "output_usd_per_mtok": price.output_per_mtok,
                "usd_per_query": per_query,
                "energy_usd": math.nan,
                "hardware_usd": math.nan,
                "total_usd": per_query * n_queries,
                "machine_days": math.nan,
            }
        )
    for run in local or ():
        energy, hardware = run.cost_per_query(input_tokens, output_tokens)
        days = run.seconds_per_query(input_tokens, output_tokens) * n_queries / 86400
        rows.append(
            {
                "option": run.name,
                "kind": "local",
                "provider": "local",
                "input_usd_per_mtok": math.nan,
                "output_usd_per_mtok": math.nan,
                "usd_per_query": energy + hardware,
                "energy_usd": energy * n_queries,
                "hardware_usd": hardware * n_queries,
                "total_usd": (energy + hardware) * n_queries,
                "machine_days": days,
            }
        )
    df = pd.DataFrame(rows).set_index("option")
    df["usd_per_query"] = df["usd_per_query"].round(6)
    for col in ("energy_usd", "hardware_usd", "total_usd"):
        df[col] = df[col].round(2)
    df["machine_days"] = df["machine_days"].round(1)
    df.attrs.update(input_tokens=input_tokens, output_tokens=output_tokens, n_queries=n_queries)
    return df


# --------------------------------------------------------------------------- break-even


@dataclass(frozen=True)
class BreakEven:
    """Queries per month at which owning a machine costs the same as paying per call."""

    queries_per_month: float  # math.inf when local never catches up
    api_usd_per_query: float
    local_fixed_per_month: float
    local_energy_per_query: float
    capacity_per_month: float  # what one machine can serve at the stated hours per day


def break_even_queries(api_usd_per_query: float, fixed_per_month: float, energy_per_query: float) -> float:
    """Solve fixed + energy x q = api x q for q: q = fixed / (api - energy); inf if never."""
    for name, value in (
        ("api_usd_per_query", api_usd_per_query),
        ("fixed_per_month", fixed_per_month),
        ("energy_per_query", energy_per_query),
    ):
        if value is None or not math.isfinite(value) or value < 0:
            raise BadInput(
                f"{name} must be a finite number >= 0, got {value!r}", "costs are in USD and cannot be negative"
            )
    margin = api_usd_per_query - energy_per_query
    if margin <= 0:
        return math.inf  # each local query costs at least as much as the API: never pays off
    return fixed_per_month / margin


def break_even(price: ApiPrice | float, run: LocalRun, input_tokens: int, output_tokens: int) -> BreakEven:
    """Break-even for one API model (or a USD-per-query figure) against one local run.

    Here hardware is a fixed monthly write-off (price / months of life), paid however busy the
    machine is; energy is paid per query. Utilisation then follows from the query volume.
    """
    api = price if isinstance(price, (int, float)) else query_cost_api(price, input_tokens, output_tokens)
    a = run.assumptions
    seconds = run.seconds_per_query(input_tokens, output_tokens)
    # idle draw is paid all month; a busy second adds only the draw above idle
    energy = (a.watts - a.idle_watts) / SECONDS_PER_KWH * seconds * a.price_per_kwh
    fixed = a.hardware_per_month + a.idle_watts / 1000 * a.hours_per_day * DAYS_PER_MONTH * a.price_per_kwh
    capacity = a.hours_per_day * 3600 * DAYS_PER_MONTH / seconds if seconds > 0 else math.inf
    return BreakEven(
        queries_per_month=break_even_queries(float(api), fixed, energy),
        api_usd_per_query=float(api),
        local_fixed_per_month=fixed,
        local_energy_per_query=energy,
        capacity_per_month=capacity,
    )


def monthly_cost_curves(
    prices: Iterable[str | ApiPrice],
    run: LocalRun,
    input_tokens: int,
    output_tokens: int,
    max_queries: float | None = None,
    points: int = 41,
    when: datetime | None = None,
) -> pd.DataFrame:
    """Monthly USD against queries per month: one column per API model, one for the local run.

    The local column adds a machine (another fixed write-off) each time one machine's monthly
    capacity is exceeded. Default range: 0 to 2x the largest finite break-even (or capacity).
    """
    resolved = [p if isinstance(p, ApiPrice) else api_price(p, when=when) for p in prices]
    if not resolved:
        raise BadInput("no API model given", "pass e.g. ['gpt-4o-mini', 'gpt-4o']")
    if points < 2:
        raise BadInput(f"points must be >= 2, got {points}", "e.g. points=41")
    evens = {p.model: break_even(p, run, input_tokens, output_tokens) for p in resolved}
    any_even = next(iter(evens.values()))
    if max_queries is None:
        finite = [e.queries_per_month for e in evens.values() if math.isfinite(e.queries_per_month)]
        max_queries = 2 * max(finite) if finite else any_even.capacity_per_month
        if not math.isfinite(max_queries) or max_queries <= 0:
            max_queries = 1_000_000
    if max_queries <= 0:
        raise BadInput(f"max_queries must be positive, got {max_queries}", "e.g. 1_000_000")
    step = max_queries / (points - 1)
    queries = [round(i * step) for i in range(points)]
    data: dict[str, Sequence[float]] = {"queries_per_month": queries}  # whole queries, then USD
    for p in resolved:
        data[p.model] = [round(q * evens[p.model].api_usd_per_query, 2) for q in queries]
    cap = any_even.capacity_per_month
    data[run.name] = [
        round(max(1, math.ceil(q / cap)) * any_even.local_fixed_per_month + q * any_even.local_energy_per_query, 2)
        for q in queries
    ]
    df = pd.DataFrame(data).set_index("queries_per_month")
    df.attrs.update(
        local=run.name,
        capacity_per_month=cap,
        break_even={k: (v.queries_per_month, v.api_usd_per_query) for k, v in evens.items()},
    )
    return df


def plot_break_even(df: pd.DataFrame, ax=None, log: bool = False):
    """Plot `monthly_cost_curves` output: cost lines, break-even dots, one machine's capacity.

    `log=True` uses log axes, so cheap and expensive models are both readable (0 is dropped).
    """
    import matplotlib.pyplot as plt

    if log:
        df = df[df.index > 0]  # a row selection keeps df.attrs

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    local = df.attrs.get("local")
    cap = df.attrs.get("capacity_per_month", math.inf)
    for col in df.columns:
        ax.plot(df.index, df[col], label=col, lw=2.5 if col == local else 1.5, ls="-" if col == local else "--")
    if local in df.columns:
        for q, api in df.attrs.get("break_even", {}).values():
            if math.isfinite(q) and q <= min(df.index.max(), cap):  # past capacity the lines meet elsewhere
                ax.plot([q], [q * api], "o", color="black", ms=5)
    if cap and math.isfinite(cap) and cap <= df.index.max():
        ax.axvline(cap, color="grey", ls=":", label="one machine's capacity")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("queries per month")
    ax.set_ylabel("USD per month")
    ax.set_title("Monthly cost: pay per call vs own the machine")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def sensitivity(
    tokens_per_s: float,
    assumptions: LocalAssumptions,
    utilisations: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1.0),
    prices_per_kwh: Sequence[float] = (0.10, 0.20, 0.30, 0.40),
) -> pd.DataFrame:
    """Local USD per million tokens over a grid of utilisation (rows) x electricity price (columns).

    Everything else stays as in `assumptions`; it shows which assumption actually moves the cost.
    """
    grid = {}
    for kwh in prices_per_kwh:
        grid[kwh] = [
            round(
                local_cost_per_mtok(
                    tokens_per_s, replace(assumptions, utilisation=u, price_per_kwh=kwh)
                ).total_per_mtok,
                4,
            )
            for u in utilisations
        ]
    df = pd.DataFrame(grid, index=pd.Index(list(utilisations), name="utilisation"))
    df.columns.name = "usd_per_kwh"
    return df
