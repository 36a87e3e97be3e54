"""``baton docker``: build the Docker agent's default image from the local source.

Usage::

    baton docker build-image
    baton docker build-image --tag baton:dev --json
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from baton.cli.output import CliError, InputError, UnavailableError, echo_json
from baton.images import DEFAULT_TAG

# A Docker image reference: [registry[:port]/]path[:tag], path components lower case (the daemon's grammar,
# simplified); checked here so that a typo is a usage error (exit 2), not a failed build.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG_RE = re.compile(
    rf"^(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?$"
)


@click.group("docker")
def docker_group() -> None:
    """Docker helpers: the image the Docker agent runs flows in."""


@docker_group.command("build-image")
@click.option("--tag", default=DEFAULT_TAG, show_default=True, help="Tag of the image to build.")
@click.option(
    "--source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The Baton checkout to build from. Default: the working directory or a parent of it, else the checkout "
    "this baton is installed from.",
)
@click.option("-b", "--base-url", metavar="URL", help="Docker daemon address. Default: $DOCKER_HOST, else the socket.")
@click.option("--json", "as_json", is_flag=True, help="Print the image as JSON (progress goes to stderr).")
def build_image(tag: str, source: Path | None, base_url: str | None, as_json: bool) -> None:
    """Build the Docker agent's default image from the local source.

    Builds the wheels on the host (Baton from the source, its dependencies from the package index, cached in
    .cache/wheels of the checkout), then the image from the checkout's Dockerfile with no network inside the
    build. The image's label io.baton.source-hash identifies the source it was built from. Progress goes to
    stderr; the tag of the image to stdout.
    """
    from baton import images

    if not _TAG_RE.match(tag):
        raise InputError(f"--tag {tag!r} is not a valid image reference (e.g. baton:0.1.0, registry:5000/team/baton)")
    try:
        root = images.find_project_root(source)
    except images.ImageBuildError as exc:
        raise InputError(str(exc)) from exc

    def progress(line: str) -> None:
        click.echo(line, err=True)

    start = time.monotonic()
    try:
        client = images.connect(base_url)
        try:
            built = images.build_image(client, root, tag, progress=progress)
        finally:
            client.close()
    except images.DockerUnavailableError as exc:
        raise UnavailableError(f"{exc} (is dockerd running? scripts/docker/start-dockerd.sh starts one)") from exc
    except images.ImageBuildError as exc:
        raise CliError(str(exc)) from exc
    seconds = time.monotonic() - start
    if as_json:
        echo_json(
            {
                "tag": built.tag,
                "id": built.id,
                "source_hash": built.source_hash,
                "size": built.size,
                "seconds": round(seconds, 1),
            }
        )
        return
    progress(f"Built {built.tag} ({built.size / 1e6:.0f} MB, {built.id}) in {seconds:.1f} s")
    click.echo(built.tag)
