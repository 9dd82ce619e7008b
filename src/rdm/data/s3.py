"""S3 access through boto3, configured from the `s3` params section and the environment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rdm.config import S3Params


def is_s3_uri(location: str) -> bool:
    return location.startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/key' -> ('bucket', 'some/key')."""
    if not is_s3_uri(uri):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket; expected s3://bucket/prefix")
    return bucket, key


def make_client(params: S3Params) -> Any:
    """A thread-safe S3 client with retries. Endpoint and credentials come from params when set,
    otherwise from boto3's usual chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, profiles, ...)."""
    import boto3
    from botocore.config import Config as BotoConfig

    kwargs: dict[str, Any] = {
        "config": BotoConfig(retries={"max_attempts": params.max_attempts, "mode": "standard"}),
    }
    if params.endpoint_url:
        kwargs["endpoint_url"] = params.endpoint_url
    if params.region:
        kwargs["region_name"] = params.region
    if params.access_key_id and params.secret_access_key:
        kwargs["aws_access_key_id"] = params.access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = params.secret_access_key.get_secret_value()
    return boto3.client("s3", **kwargs)


class S3Access:
    """A holder of a boto3 client made from `s3` params. A client cannot be pickled (to a Ray worker):
    it is left behind and made again from the params on the other side."""

    client: Any
    s3: S3Params | None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "client": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.s3 is not None:
            self.client = make_client(self.s3)
