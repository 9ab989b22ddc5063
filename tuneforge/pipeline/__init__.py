"""The train-then-eval pipeline (build → train → evaluate → forgetting → report) as a plain function, with
a content-keyed step cache; `tuneforge.flows.pipeline` runs the same function as a Prefect flow."""

from tuneforge.pipeline.config import PipelineConfig, Plan, load_pipeline, plan_pipeline
from tuneforge.pipeline.run import StepRunner, run_pipeline

__all__ = ["PipelineConfig", "Plan", "StepRunner", "load_pipeline", "plan_pipeline", "run_pipeline"]
