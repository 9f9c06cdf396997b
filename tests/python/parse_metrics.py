"""Reads a /metrics exposition on stdin with the Prometheus project's own OpenMetrics parser
(strict: it refuses anything the format does not allow) and prints every sample as one JSON
object per line: {"name": ..., "labels": {...}, "value": ...}. Exit 1 with the parser's
complaint when the text does not parse."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

text = sys.stdin.read()
try:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            print(json.dumps({"family": family.name, "type": family.type, "name": s.name,
                              "labels": s.labels, "value": s.value}))
except Exception as e:  # the parser's own error says what is wrong and where
    print(f"does not parse as OpenMetrics: {e}", file=sys.stderr)
    sys.exit(1)
