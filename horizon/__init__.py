"""horizon: where do visual tokens stop carrying information in a vision LLM?

    import horizon
    vlm = horizon.load("llava-hf/llava-1.5-7b-hf")
    result = horizon.scan(vlm, "data.jsonl", layers="all", group=2, metrics=("kl", "dlogp"))
    result.scores  # tidy long-form frame: sample_id, layer, group, metric, value
"""

__version__ = "0.1.0"

from .errors import HorizonError, SampleError  # noqa: E402
from .models import VisionLM, load  # noqa: E402
from .scan import ScanConfig, ScanResult, scan  # noqa: E402
from .data import Sample, read_jsonl  # noqa: E402
from .io.runs import read_run  # noqa: E402
from .stats import StatsParams  # noqa: E402
from .records import Horizon  # noqa: E402
from .analysis import analyze  # noqa: E402
from .report import report  # noqa: E402

__all__ = [
    "HorizonError", "SampleError", "VisionLM", "load", "ScanConfig", "ScanResult", "scan",
    "Sample", "read_jsonl", "read_run", "StatsParams", "Horizon", "analyze", "report", "__version__",
]
