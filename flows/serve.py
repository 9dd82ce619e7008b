"""Serve the three deployments from this project (what `make services` starts): `train-rdm/train-rdm`,
`sample-styles/sample-styles` and `refresh-style-collections/refresh-style-collections`, the last on
the cron schedule of `refresh.schedule`, one run at a time. Runs execute in this folder."""

from __future__ import annotations

from prefect import serve
from prefect.schedules import Cron

from flows.refresh_styles import refresh_style_collections
from flows.sample_styles import sample_styles
from flows.tasks import config
from flows.train_rdm import train_rdm


def main() -> None:
    schedule = config().refresh
    serve(
        train_rdm.to_deployment(name="train-rdm", concurrency_limit=1),
        sample_styles.to_deployment(name="sample-styles"),
        refresh_style_collections.to_deployment(
            name="refresh-style-collections",
            schedules=[Cron(schedule.schedule, timezone=schedule.timezone)],
            concurrency_limit=1,
        ),
        pause_on_shutdown=False,
    )


if __name__ == "__main__":
    main()
