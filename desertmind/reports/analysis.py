"""Looking inside a run: its best model ranks the validation images
(:class:`~desertmind.inference.ranking.SplitRanking`), and the worst are drawn as a grid."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from desertmind import runs
from desertmind.data.datamodule import OffroadDataModule
from desertmind.figures import prediction_grid
from desertmind.inference.ranking import SplitRanking
from desertmind.models.trained import TrainedModel, load_trained
from desertmind.reports.report import RunSummary


def worst_grid(ranking: SplitRanking, k: int = 4) -> Figure:
    """image | ground truth | prediction | error map for the ``k`` lowest-scoring images of
    ``ranking``, each row titled with the image's name and mean IoU."""
    worst = ranking.scores[:k]
    shown = [ranking.render(s.index) for s in worst]
    return prediction_grid(*(list(column) for column in zip(*shown, strict=True)),
                           [f"{s.name}\nmIoU {s.miou:.3f}" for s in worst])


def load_best(run: RunSummary) -> tuple[TrainedModel, OffroadDataModule]:
    """The run's best model (on the CPU, eval mode) and its data module, from its config."""
    ckpt, _ = runs.checkpoints_of_run(run.path)
    trained = load_trained(ckpt)
    data = dict(run.config.get("data") or {})
    data.update(num_workers=0, pin_memory=False, root=str(_find_root(run, data.get("root"))))
    dm = OffroadDataModule(**data)
    dm.setup("validate")
    return trained, dm


def _find_root(run: RunSummary, root: str | None) -> Path:
    """A relative data root is relative to where training ran: the cwd or a run ancestor."""
    path = Path(root or "data/offroad")
    if path.is_absolute():
        return path
    for base in (Path.cwd(), *run.path.resolve().parents):
        if (base / path).is_dir():
            return base / path
    return path  # not found: the data module's error says where the data should be


def rank_run(run: RunSummary, batch_size: int = 8) -> SplitRanking:
    """Every validation image of the run, scored by its best model, lowest mean IoU first."""
    trained, dm = load_best(run)
    return SplitRanking(trained.evaluation(), dm.datasets["val"], batch_size=batch_size)
