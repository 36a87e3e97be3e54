"""Tasks side by side: ``map`` over a list, a future as a dependency, on a pool of threads.

Run it here and now, without a server::

    python examples/parallel.py

Or let an agent run it (``make demo`` does), choosing another executor for one run if you like::

    baton register examples/parallel.py
    baton run parallel --watch
    baton run parallel --executor process:4 --watch

Each page is a task run of its own (``fetch_page[0]`` ... ``fetch_page[5]``), all started at once; ``count_words``
starts when every page is in, and gets their texts. ``baton runs get ID`` lists the task runs; the UI's run page
draws them on a time line.
"""

from __future__ import annotations

import logging
import time

from baton import ThreadExecutor, flow, task, unmapped

logger = logging.getLogger(__name__)


@task(retries=1)
def fetch_page(number: int, delay: float) -> str:
    """Stands in for an HTTP request: waits, then returns the page's text."""
    logger.info("Fetching page %d", number)
    time.sleep(delay)
    return f"page {number} " + "word " * number


@task
def count_words(pages: list[str]) -> int:
    return sum(len(page.split()) for page in pages)


@flow(executor=ThreadExecutor(max_workers=6))
def parallel(pages: int = 6, delay: float = 0.5) -> int:
    """Fetch the pages side by side, then count their words."""
    started = time.monotonic()
    fetched = fetch_page.map(list(range(pages)), delay=unmapped(delay))
    words = count_words.submit(fetched).result()
    logger.info("%d words in %d pages, fetched in %.1f s", words, pages, time.monotonic() - started)
    return words


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(parallel())
