"""The data build: a recipe's corpora to split, cleaned, augmented, exported datasets (`build`), shard by
shard on any executor. `tuneforge.flows.build` wraps it as a Prefect flow."""

from tuneforge.builder.run import Build, BuildOptions, build

__all__ = ["Build", "BuildOptions", "build"]
