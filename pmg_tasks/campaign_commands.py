"""`pmg campaigns`: what marketing ops run before a night.

    pmg campaigns validate [PATH]    every problem of every campaign file, with the file, the field and the fix
    pmg campaigns list --ds DATE     which campaigns run that night, the users each reaches, what it costs
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path


def add_campaign_commands(commands) -> None:
    campaigns = commands.add_parser("campaigns", help="check and list campaigns").add_subparsers(
        dest="campaigns_command", required=True
    )
    validate = campaigns.add_parser(
        "validate", help="check every campaign file; exits 1 when one is broken",
        description="Checks every campaign under PATH (default: PMG_CAMPAIGNS_FILE) against the schema and the "
        "settings profile's limits, and prints every problem with the file, the field and the fix.",
    )  # fmt: skip
    validate.add_argument("path", nargs="?", type=Path, help="a campaigns folder or file")
    listing = campaigns.add_parser(
        "list", help="the campaigns of a night: active or not, users reached, distinct generations",
        description="Figures come from the latest run on or before --ds (its users and segments).",
    )
    listing.add_argument("--ds", required=True, help="the night, YYYY-MM-DD")
    listing.add_argument("--path", type=Path, help="a campaigns folder or file (default: PMG_CAMPAIGNS_FILE)")


def run_campaigns_command(args: argparse.Namespace) -> int:
    from pmg_tasks.campaigns import read_campaigns
    from pmg_tasks.settings import Settings

    settings = Settings()
    path = Path(getattr(args, "path", None) or settings.campaigns_file)
    found = read_campaigns(path, settings.campaign_limits)
    if args.campaigns_command == "validate":
        for problem in found.problems:
            print(problem)
        print(f"{len(found.campaigns)} valid, {len(found.problems)} problems in {path}",
              file=sys.stderr if found.problems else sys.stdout)  # fmt: skip
        return 1 if found.problems else 0
    try:
        dt.date.fromisoformat(args.ds)
    except ValueError:
        print(f"pmg campaigns list: --ds {args.ds!r} is not a date; write it as YYYY-MM-DD", file=sys.stderr)
        return 2
    return _print_listing(settings, args.ds, found)


def _print_listing(settings, ds: str, found) -> int:
    from pmg_tasks.plan.cost import estimate_night

    active = found.active(ds)
    estimate = estimate_night(settings, ds, active)
    basis = estimate["basis"]
    print(f"campaigns for {ds} in {found.source}"
          + (f" (users and segments of the run of {basis})" if basis else " (no run yet: users unknown)"))  # fmt: skip
    header = f"{'campaign':<24} {'active':<6} {'prio':>4} {'review':<8} {'mode':<7} {'users':>7} {'targets':>7} {'generations':>11}"
    print(header)
    total_users, total_generations = 0, 0
    day = dt.date.fromisoformat(ds)
    for campaign in sorted(found.campaigns, key=lambda c: (-c.priority, c.campaign_id)):
        on = campaign.is_active(day)
        figures = estimate["campaigns"].get(campaign.campaign_id, {})
        if "error" in figures:
            cost = f"skipped: {figures['error']}"
        elif on and figures:
            total_users += figures["users"]
            total_generations += figures["generations"]
            cost = f"{figures['users']:>7} {figures['targets']:>7} {figures['generations']:>11}"
        else:
            cost = f"{'-':>7} {'-':>7} {'-':>11}"
        print(f"{campaign.campaign_id:<24} {'yes' if on else 'no':<6} {campaign.priority:>4} {campaign.review:<8} "
              f"{campaign.personalization:<7} {cost}")  # fmt: skip
    for problem in found.problems:
        print(f"broken, skipped: {problem}")
    if basis:
        print(f"the night: {len(active)} active campaigns, {total_generations} distinct generations at most "
              f"(users counted once per campaign: {total_users})")  # fmt: skip
    return 1 if found.problems else 0
