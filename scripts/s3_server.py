"""A local S3-compatible server (moto's) on 127.0.0.1 that counts the requests it serves.

    with S3Server() as s3:                 # a bucket "daskem" is made
        s3.storage_options                 # for fsspec/s3fs: key, secret, endpoint
        s3.requests(prefix="daskem/run.zarr/")   # Counter of methods for keys under a prefix

Used by the object-store tests and by scripts/bench_object_store.py; needs the test extras
(moto[server], s3fs).
"""

from __future__ import annotations

import threading
import urllib.parse
from collections import Counter

BUCKET = "daskem"


class S3Server:
    def __init__(self, bucket: str = BUCKET) -> None:
        self.bucket = bucket
        self.log: list[tuple[str, str]] = []  # (method, "bucket/key" or "bucket?query")
        self._lock = threading.Lock()

    def _app(self):
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            create_backend_app,
        )

        inner = DomainDispatcherApplication(create_backend_app)

        def counted(environ, start_response):
            path = urllib.parse.unquote(environ.get("PATH_INFO", "")).lstrip("/")
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            if "prefix" in query:  # a listing: count it against the listed prefix
                path = f"{path.rstrip('/')}/{query['prefix'][0]}"
            with self._lock:
                self.log.append((environ["REQUEST_METHOD"], path))
            return inner(environ, start_response)

        return counted

    def __enter__(self) -> S3Server:
        import logging

        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = make_server("127.0.0.1", 0, self._app(), threaded=True,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self.storage_options = {"key": "daskem-test", "secret": "daskem-test-secret",
                                "client_kwargs": {"endpoint_url": self.endpoint}}
        import s3fs

        s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True).mkdir(self.bucket)
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._thread.join()

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def requests(self, prefix: str = "") -> Counter:
        """Requests served for keys under ``bucket/prefix``, by method."""
        with self._lock:
            return Counter(m for m, p in self.log if p.startswith(f"{self.bucket}/{prefix}"))

    def reset(self) -> None:
        with self._lock:
            self.log.clear()
