"""Cost model: hand-computed arithmetic, break-even solved by hand, real genai-prices look-ups."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import matplotlib
import pytest

matplotlib.use("Agg")

from helpers.cost import (  # noqa: E402
    HOURS_PER_YEAR,
    ApiPrice,
    LocalAssumptions,
    LocalRun,
    api_price,
    break_even,
    break_even_queries,
    local_cost_per_mtok,
    million_queries_table,
    monthly_cost_curves,
    plot_break_even,
    prices_data_info,
    query_cost_api,
    sensitivity,
)
from helpers.errors import BadInput  # noqa: E402

pytestmark = pytest.mark.no_server  # a unit test: no model server needed

WHEN = datetime(2026, 11, 1, tzinfo=timezone.utc)
ONE_HOUR_PER_MTOK = 1e6 / 3600  # tokens/s at which one million tokens take exactly one hour


def round_assumptions(**over) -> LocalAssumptions:
    """1 kW at $0.25/kWh; hardware worth exactly $1 per switched-on hour (1 year, 24 h/day)."""
    base = dict(
        watts=1000.0,
        price_per_kwh=0.25,
        hardware_price=HOURS_PER_YEAR,
        lifetime_years=1.0,
        utilisation=1.0,
        hours_per_day=24.0,
    )
    base.update(over)
    return LocalAssumptions(**base)


def fake_price(inp: float, out: float) -> ApiPrice:
    return ApiPrice(provider="test", model="m", input_per_mtok=inp, output_per_mtok=out, source="by hand")


# ---------------------------------------------------------------- arithmetic by hand


def test_local_cost_energy_and_hardware_on_round_numbers():
    cost = local_cost_per_mtok(ONE_HOUR_PER_MTOK, round_assumptions())
    assert cost.busy_hours_per_mtok == pytest.approx(1.0)
    assert cost.kwh_per_mtok == pytest.approx(1.0)  # 1 kW for 1 h
    assert cost.energy_per_mtok == pytest.approx(0.25)  # 1 kWh x $0.25
    assert cost.hardware_per_mtok == pytest.approx(1.0)  # $1 per busy hour x 1 h
    assert cost.total_per_mtok == pytest.approx(1.25)


def test_low_utilisation_and_short_days_raise_only_the_hardware_share():
    half = local_cost_per_mtok(ONE_HOUR_PER_MTOK, round_assumptions(utilisation=0.5))
    assert half.hardware_per_mtok == pytest.approx(2.0)  # each busy hour carries an idle one
    assert half.energy_per_mtok == pytest.approx(0.25)  # no idle draw stated: energy unchanged
    short = local_cost_per_mtok(ONE_HOUR_PER_MTOK, round_assumptions(hours_per_day=12))
    assert short.hardware_per_mtok == pytest.approx(2.0)  # half the switched-on hours in its life
    faster = local_cost_per_mtok(2 * ONE_HOUR_PER_MTOK, round_assumptions())
    assert faster.total_per_mtok == pytest.approx(0.625)  # twice the speed, half the cost


def test_idle_draw_is_charged_to_busy_time():
    # 50% busy, 200 W idle: each busy hour also carries one idle hour = 0.2 kWh more
    cost = local_cost_per_mtok(ONE_HOUR_PER_MTOK, round_assumptions(utilisation=0.5, idle_watts=200))
    assert cost.kwh_per_mtok == pytest.approx(1.2)
    assert cost.energy_per_mtok == pytest.approx(0.30)


def test_query_cost_api_by_hand():
    price = fake_price(10.0, 30.0)  # GPT-4 Turbo's list price shape
    assert query_cost_api(price, 1000, 0) == pytest.approx(0.01)
    assert query_cost_api(price, 1000, 500) == pytest.approx(0.025)
    tiered = ApiPrice("test", "m", 1.0, 2.0, "by hand", input_tiers=((100, 3.0),), output_tiers=((100, 4.0),))
    assert query_cost_api(tiered, 100, 1_000_000) == pytest.approx(2.0 + 0.0001)  # at the threshold: base
    assert query_cost_api(tiered, 101, 1_000_000) == pytest.approx(4.0 + 0.000303)  # above: tier for all


def test_local_run_prompt_time_counts_when_known():
    run = LocalRun("box", tokens_per_s=10, assumptions=round_assumptions(), prompt_tokens_per_s=100)
    assert run.seconds_per_query(input_tokens=500, output_tokens=30) == pytest.approx(5 + 3)
    assert LocalRun("box", 10, round_assumptions()).seconds_per_query(500, 30) == pytest.approx(3)
    energy, hardware = run.cost_per_query(500, 30)
    assert energy == pytest.approx(8 / 3600 * 0.25)
    assert hardware == pytest.approx(8 / 3600 * 1.0)


# ---------------------------------------------------------------- break-even


def test_break_even_solved_by_hand():
    # $100/month fixed; local query $0.002 of energy vs $0.01 at the API: 100 / 0.008 = 12,500
    assert break_even_queries(0.01, 100.0, 0.002) == pytest.approx(12_500)
    assert break_even_queries(0.001, 100.0, 0.002) == math.inf  # the API is cheaper per query
    assert break_even_queries(0.01, 0.0, 0.0) == 0.0


def test_break_even_from_assumptions():
    # 1 kW, $0.25/kWh, $1,200 over 1 year = $100/month; 36 s per query = 0.01 kWh = $0.0025
    a = round_assumptions(hardware_price=1200.0)
    run = LocalRun("box", tokens_per_s=10, assumptions=a)
    be = break_even(0.0125, run, input_tokens=0, output_tokens=360)
    assert be.local_fixed_per_month == pytest.approx(100.0)
    assert be.local_energy_per_query == pytest.approx(0.0025)
    assert be.queries_per_month == pytest.approx(10_000)  # 100 / (0.0125 - 0.0025)
    assert be.capacity_per_month == pytest.approx(365.25 / 12 * 86400 / 36)
    assert be.queries_per_month <= be.capacity_per_month
    slow = break_even(0.0125, LocalRun("slow", 0.1, a), 0, 360)  # 1 h per query: $0.25 of energy
    assert slow.queries_per_month == math.inf
    pricey = break_even(0.0125, LocalRun("pricey", 10, round_assumptions(hardware_price=12_000.0)), 0, 360)
    assert pricey.queries_per_month == pytest.approx(100_000)  # $1,000/month / $0.01
    assert pricey.queries_per_month > pricey.capacity_per_month  # one box serves only ~73,000


def test_monthly_cost_curves_cross_at_break_even():
    a = round_assumptions(hardware_price=1200.0)
    run = LocalRun("box", tokens_per_s=10, assumptions=a)
    price = fake_price(12.5, 0.0)  # 1,000 input tokens -> $0.0125 per query
    df = monthly_cost_curves([price], run, input_tokens=1000, output_tokens=360, max_queries=20_000, points=5)
    assert list(df.index) == [0, 5000, 10000, 15000, 20000]
    row = df.loc[10_000]
    assert row["m"] == pytest.approx(125.0) and row["box"] == pytest.approx(125.0)
    assert df.loc[20_000, "m"] > df.loc[20_000, "box"]
    ax = plot_break_even(df)
    assert len(ax.get_lines()) >= 2
    plot_break_even(df, log=True)


def test_sensitivity_grid_shape_and_values():
    grid = sensitivity(ONE_HOUR_PER_MTOK, round_assumptions(), utilisations=(0.5, 1.0), prices_per_kwh=(0.0, 0.25))
    assert grid.shape == (2, 2)
    assert grid.loc[1.0, 0.25] == pytest.approx(1.25)
    assert grid.loc[0.5, 0.0] == pytest.approx(2.0)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "field,value",
    [
        ("utilisation", 0.0),
        ("utilisation", 1.5),
        ("lifetime_years", 0),
        ("hours_per_day", 25),
        ("watts", -1),
        ("price_per_kwh", -0.1),
        ("hardware_price", float("nan")),
        ("idle_watts", 5000),
        ("watts", "65"),
    ],
)
def test_bad_assumptions_raise_badinput(field, value):
    with pytest.raises(BadInput) as err:
        round_assumptions(**{field: value})
    assert err.value.hint


@pytest.mark.parametrize("tps", [0, -5, float("inf"), None])
def test_non_positive_throughput_raises(tps):
    with pytest.raises(BadInput):
        local_cost_per_mtok(tps, round_assumptions())


def test_bad_token_counts_and_sizes_raise():
    with pytest.raises(BadInput):
        query_cost_api(fake_price(1, 1), -1, 10)
    with pytest.raises(BadInput):
        million_queries_table([fake_price(1, 1)], 100, 100, n_queries=0)
    with pytest.raises(BadInput):
        break_even_queries(-1, 10, 0)


def test_unknown_model_lists_close_names():
    with pytest.raises(BadInput) as err:
        api_price("gpt-4o-mni")
    assert "gpt-4o-mini" in err.value.hint
    with pytest.raises(BadInput) as err:
        api_price("gpt-4o", provider="opneai")
    assert "openai" in err.value.hint


# ---------------------------------------------------------------- real genai-prices data


def test_real_price_gpt_4o_mini():
    price = api_price("gpt-4o-mini", when=WHEN)
    assert price.provider == "openai"
    assert price.input_per_mtok > 0 and price.output_per_mtok >= price.input_per_mtok
    assert "genai-prices 0.2" in price.source and "2026-11-01" in price.source


def test_query_cost_matches_genai_prices_own_calculation():
    from genai_prices import Usage, calc_price

    price = api_price("gpt-4o", when=WHEN)
    ours = query_cost_api(price, 1234, 567)
    theirs = calc_price(Usage(input_tokens=1234, output_tokens=567), "gpt-4o", genai_request_timestamp=WHEN)
    assert ours == pytest.approx(float(theirs.total_price))


def test_million_queries_table_is_deterministic_and_consistent():
    run = LocalRun("laptop", tokens_per_s=ONE_HOUR_PER_MTOK, assumptions=round_assumptions())
    args = (["gpt-4o-mini", "gpt-4o"], 1000, 1000)
    df = million_queries_table(*args, local=[run], when=WHEN)
    assert df.equals(million_queries_table(*args, local=[run], when=WHEN))
    assert list(df.index) == ["gpt-4o-mini", "gpt-4o", "laptop"]
    mini = api_price("gpt-4o-mini", when=WHEN)
    assert df.loc["gpt-4o-mini", "total_usd"] == pytest.approx(round(1e6 * query_cost_api(mini, 1000, 1000), 2))
    assert df.loc["gpt-4o", "total_usd"] > df.loc["gpt-4o-mini", "total_usd"]
    # 1M queries x 1,000 tokens = 1,000 Mtok at $1.25/Mtok, and 1,000 busy hours of one machine
    assert df.loc["laptop", "total_usd"] == pytest.approx(1250.0)
    assert df.loc["laptop", "energy_usd"] == pytest.approx(250.0)
    assert df.loc["laptop", "machine_days"] == pytest.approx(1000 / 24, abs=0.05)


def test_prices_data_info_names_version():
    assert prices_data_info(WHEN).startswith("genai-prices 0.")
