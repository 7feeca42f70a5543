"""The shipped reranker, as provisioned by `models fetch`, run in llama.cpp on the demo's own
passages: it puts the passage (and the sentence) that answers first.

Margins: logits differ between CPU kernels by about 1e-3 (an f32 GGUF); each assertion
leaves at least 1 logit of room below what was measured here (the figures are in each test).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.runtime.client import EngineClient
from appliance.runtime.model_store import ModelStore
from appliance.runtime.protocol import EngineSpec

ROW = ("Key: LE-400 link encryptor traffic keys; Where it is used: Encrypted links between Building D and Building C; "
       "Rotation period: Monthly, first Tuesday of the month, 02:00-04:00; Who rotates it: COMSEC Custodian with a "
       "second custodian")
UPCOMING = ("## Upcoming rotations\n- LE-400 traffic keys: Tuesday 4 November 2025, 02:00-04:00, then Tuesday "
            "2 December 2025.\n- Internal TLS certificates for the analyst appliance: 17 November 2025.\n"
            "- VPN site-to-site certificates: 9 January 2026.")
WINDOW = ("During the 02:00-04:00 link encryptor window the Test Cell telemetry link may drop for up to 10 minutes; "
          "the Test Cell Shift Supervisor (ext 5101) is told at the start of the window.")
KIOSK = ("The Removable Media Kiosk is in room A-017 in Building A, next to the Badge Office (A-014). The kiosk is "
         "open 07:30-18:00, Monday to Friday.")


@pytest.fixture(scope="module")
def cross(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    spec = EngineSpec(reranker_path=str(model_store.get("scifact-minilm-reranker").path), threads=2)
    with EngineClient(spec, log_path=tmp_path_factory.mktemp("cross") / "host.log", request_timeout_s=120) as client:
        yield client


def test_reranker_puts_the_table_row_that_answers_first(cross: EngineClient) -> None:
    """The issue's LE-400 question: the rotation-period row, not the list of upcoming dates.
    Measured: row 12.5, upcoming list -2.9, telemetry window -5.3."""
    row, upcoming, window = cross.rerank("How often are the LE-400 link encryptor traffic keys rotated?",
                                         [ROW, UPCOMING, WINDOW])
    assert row > upcoming + 5 and row > window + 5


def test_reranker_scores_the_answering_sentence_above_its_neighbours(cross: EngineClient) -> None:
    """Measured: 8.1 for the room sentence, -0.6 and -3.6 for the others."""
    scores = cross.rerank("Which room is the Removable Media Kiosk in?",
                          ["The Removable Media Kiosk is in room A-017 in Building A, next to the Badge Office "
                           "(A-014).",
                           "Report faults with the kiosk to the IT Service Desk on ext 4400.",
                           "Visitors wear yellow badges and are escorted at all times."])
    assert scores[0] > max(scores[1:]) + 3
