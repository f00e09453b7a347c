"""evaluate: embeddings of the test tracklets -> CMC / mAP / mINP under the dataset's protocols."""
from __future__ import annotations

import datetime

import numpy as np
import torch

from pipeline import paths
from pipeline.params import Params, load_params
from pipeline.registry import register_model
from pipeline.stage import bars, log_files, log_numbers, read_dataset_info, stage_flow, stage_run, stage_task
from psta.data.registry import get_dataset

METRICS_JSON = paths.REPORTS / "metrics.json"
CMC_CSV = paths.REPORTS / "cmc.csv"
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def sampling_for(params: Params, dataset: str) -> str:
    """evaluate.sampling, where ``auto`` is the paper's test sampling for the dataset."""
    sampling = params.evaluate.sampling
    return get_dataset(dataset).test_sampling if sampling == "auto" else sampling


def evaluation_sampling(params: Params, dataset: str) -> dict:
    """How the evaluation samples a test tracklet, as extract_features takes it: ``sampling``,
    and for dense the ``max_clips`` window and its ``seed``. The gallery and the served model
    embed with these too."""
    e = params.evaluate
    return {"sampling": sampling_for(params, dataset), "max_clips": e.max_clips, "seed": e.seed}


@stage_task
def embed(params: Params, model, tracklets, cache, dataset: str):
    from psta.engine.inference import extract_features

    e = params.evaluate
    return extract_features(model, tracklets, cache, seq_len=params.model.seq_len,
                            **evaluation_sampling(params, dataset), batch_size=e.batch_size,
                            precision=e.precision, num_workers=e.num_workers, progress=bars())


@stage_task
def score(params: Params, features, tracklets, protocols) -> dict:
    from psta.evaluation import evaluate_protocol

    e = params.evaluate
    rerank = {"k1": e.k1, "k2": e.k2, "lambda_value": e.lambda_value} if e.rerank else None
    return {
        name: evaluate_protocol(name, features, tracklets, metric=e.metric, rerank=rerank,
                                max_rank=e.max_rank, topk=10, target_fpr=e.target_fpr,
                                bootstrap=e.bootstrap, seed=e.bootstrap_seed)
        for name in protocols
    }


def model_record(checkpoint: dict) -> dict:
    """What was evaluated: the architecture and the training recipe, from the final model file.

    ``train_identities`` counts the identities trained on (held-out validation ones apart);
    ``precision`` is the setting and, for ``auto``, what it resolves to on the training device."""
    from psta.engine import resolve_device, split_validation
    from psta.model.precision import resolve_precision

    config, recipe = checkpoint["config"], checkpoint.get("train_config") or {}
    classes = int(config["num_classes"])
    _, held = split_validation(np.arange(classes), recipe.get("val_fraction", 0.0),
                               tuple(recipe.get("val_ids") or ()), recipe.get("seed", 0))
    precision = recipe.get("precision", "auto")
    if precision == "auto":
        dtype = resolve_precision(precision, resolve_device(recipe.get("device", "auto")))
        precision = f"auto ({PRECISION_NAMES[dtype]})"
    return {
        **{k: config[k] for k in ("arch", "backbone", "height", "width", "seq_len", "pretrained") if k in config},
        "epochs": checkpoint.get("epochs", recipe.get("epochs")), "precision": precision,
        "train_identities": classes - len(held), "val_identities": len(held),
    }


def provenance(run) -> dict:
    """When, from which commit and params, and in which MLflow run the evaluation ran."""
    tags = run.data.tags
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "git_commit": tags.get("git_commit", "unknown"), "params_hash": tags.get("params_hash", ""),
            "mlflow_run_id": run.info.run_id}


@stage_task
def untrained_model(params: Params, checkpoint: dict, tracklets, cache):
    """The baseline: the trained model's architecture freshly initialised (train.seed), its
    BatchNorm statistics estimated on training clips (without them it embeds nearly every clip as 0)."""
    from psta.engine.inference import calibrate_batchnorm
    from psta.model import build_model

    torch.manual_seed(params.train.seed)
    fresh = build_model(**{**checkpoint["config"], "pretrained": params.model.pretrained})
    train = tracklets[tracklets["split"] == "train"]
    return calibrate_batchnorm(fresh, train, cache, params.model.seq_len, batch_size=params.evaluate.batch_size,
                               seed=params.train.seed, num_workers=params.evaluate.num_workers)


@stage_flow("evaluate")
def evaluate(params_path: str = "params.yaml") -> dict:
    from psta.data.cache import FrameCache
    from psta.evaluation.outputs import write_eval_outputs, write_metrics
    from psta.index import read_index
    from psta.model import load_checkpoint

    params = load_params(params_path)
    with stage_run("evaluate", params, ("evaluate",)) as run:  # + model.seq_len/pretrained, train.seed (dvc.yaml)
        index = read_index(paths.INDEX)
        dataset = index.stats["dataset"]
        protocols = get_dataset(dataset).protocol_names
        sampling = sampling_for(params, dataset)
        test = index.tracklets[index.tracklets["split"].isin(["query", "gallery"])].reset_index(drop=True)
        cache = FrameCache(paths.CACHE)
        cache.check_tracklets(index.tracklets)
        model, checkpoint = load_checkpoint(paths.MODELS / "model.pt", require_digest=True)
        features = embed(params, model, test, cache, dataset)
        results = score(params, features, test, protocols)
        untrained = None
        if params.evaluate.untrained_baseline:
            fresh = untrained_model(params, checkpoint, index.tracklets, cache)
            untrained = score(params, embed(params, fresh, test, cache, dataset), test, protocols)
        summary = write_eval_outputs(
            paths.EVAL, test, features, results, untrained, dataset=dataset, sampling=sampling,
            metric=params.evaluate.metric, rerank=params.evaluate.rerank, split=index.stats.get("split"),
            model=model_record(checkpoint), provenance=provenance(run),
        )
        metrics = write_metrics(summary, METRICS_JSON, CMC_CSV)
        log_numbers(metrics)
        log_files(METRICS_JSON, CMC_CSV, paths.EVAL / "results.json")
        serving = {**evaluation_sampling(params, dataset), "precision": params.evaluate.precision,
                   "batch_size": params.evaluate.batch_size}
        source = read_dataset_info()["source"]  # what the index was built from
        register_model(paths.MODELS / "model.pt", paths.INDEX / "stats.json", METRICS_JSON, serving,
                       paths.DATASET_INFO, source=source)
        return metrics


def flow_entry(params_path: str) -> dict:
    return evaluate(params_path=params_path)
