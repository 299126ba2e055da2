"""``@type null``: counts records and discards them."""

from __future__ import annotations

from fluent_ld.config.params import Section
from fluent_ld.pipeline.admission import CountEncoder, Encoded
from fluent_ld.plugin import Output


class NullOutput(Output):
    type_name = "null"
    summary = "Discards every record (counting them), for load tests and to silence a tag."
    section = Section("match", summary)

    def __init__(self, conf, plugin_id, worker: int = 0) -> None:
        super().__init__(conf, plugin_id, worker)
        self.records = 0

    encoder = CountEncoder()

    async def commit(self, tag: str, encoded: Encoded) -> None:
        self.records += encoded.records
