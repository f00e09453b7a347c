"""evaluate: embeddings of the test tracklets -> CMC / mAP / mINP under the dataset's protocols."""
from __future__ import annotations

import torch
from prefect import flow

from pipeline import paths
from pipeline.params import Params, load_params
from pipeline.registry import register_model
from pipeline.stage import log_files, log_numbers, stage_run, stage_task
from psta.data.registry import get_dataset

METRICS_JSON = paths.REPORTS / "metrics.json"
CMC_CSV = paths.REPORTS / "cmc.csv"


def sampling_for(params: Params, dataset: str) -> str:
    """evaluate.sampling, where ``auto`` is the paper's test sampling for the dataset."""
    sampling = params.evaluate.sampling
    return get_dataset(dataset).test_sampling if sampling == "auto" else sampling


@stage_task
def embed(params: Params, model, tracklets, cache, sampling: str):
    from psta.engine.inference import extract_features

    e = params.evaluate
    return extract_features(model, tracklets, cache, seq_len=params.model.seq_len, sampling=sampling,
                            batch_size=e.batch_size, precision=e.precision, num_workers=e.num_workers)


@stage_task
def score(params: Params, features, tracklets, protocols) -> dict:
    from psta.evaluation import evaluate_protocol

    e = params.evaluate
    rerank = {"k1": e.k1, "k2": e.k2, "lambda_value": e.lambda_value} if e.rerank else None
    return {
        name: evaluate_protocol(name, features, tracklets, metric=e.metric, rerank=rerank,
                                max_rank=e.max_rank, topk=10)
        for name in protocols
    }


@flow(name="evaluate")
def evaluate(params_path: str = "params.yaml") -> dict:
    from psta.data.cache import FrameCache
    from psta.evaluation.outputs import write_eval_outputs, write_metrics
    from psta.index import read_index
    from psta.model import build_model, load_checkpoint

    params = load_params(params_path)
    with stage_run("evaluate", params, ("evaluate",)):  # + model.seq_len/pretrained, train.seed (dvc.yaml)
        index = read_index(paths.INDEX)
        dataset = index.stats["dataset"]
        protocols = get_dataset(dataset).protocol_names
        sampling = sampling_for(params, dataset)
        test = index.tracklets[index.tracklets["split"].isin(["query", "gallery"])].reset_index(drop=True)
        cache = FrameCache(paths.CACHE)
        cache.check_tracklets(index.tracklets)
        model, checkpoint = load_checkpoint(paths.MODELS / "model.pt", require_digest=True)
        features = embed(params, model, test, cache, sampling)
        results = score(params, features, test, protocols)
        untrained = None
        if params.evaluate.untrained_baseline:
            torch.manual_seed(params.train.seed)
            fresh = build_model(**{**checkpoint["config"], "pretrained": params.model.pretrained})
            untrained = score(params, embed(params, fresh, test, cache, sampling), test, protocols)
        summary = write_eval_outputs(
            paths.EVAL, test, features, results, untrained, dataset=dataset, sampling=sampling,
            metric=params.evaluate.metric, rerank=params.evaluate.rerank, split=index.stats.get("split"),
        )
        metrics = write_metrics(summary, METRICS_JSON, CMC_CSV)
        log_numbers(metrics)
        log_files(METRICS_JSON, CMC_CSV, paths.EVAL / "results.json")
        register_model(paths.MODELS / "model.pt", paths.INDEX / "stats.json", METRICS_JSON)
        return metrics


def flow_entry(params_path: str) -> dict:
    return evaluate(params_path=params_path)
