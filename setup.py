"""Installation script for speechbrain-s4m."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="speechbrain-s4m",
    version="0.1.0",
    description=(
        "S4M: efficient speech separation with neural state-space layers, "
        "as a SpeechBrain plugin"
    ),
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["speechbrain_s4m", "speechbrain_s4m.*"]),
    package_data={"speechbrain_s4m": ["hparams/models/*.yaml"]},
    install_requires=[
        "torch>=2.7",
        "torchaudio>=2.7",
        "speechbrain>=1.0",
        "hyperpyyaml>=1.2",
        "numpy",
        "scipy",
        "soundfile",
        "fast_bss_eval>=0.1.4",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "metrics": ["pesq", "pystoi"],
        "test": ["pytest>=7", "ruff>=0.4", "mir_eval", "pesq", "pystoi"],
    },
    entry_points={
        "console_scripts": [
            "s4m-separate=speechbrain_s4m.cli:separate_main",
            "s4m-export=speechbrain_s4m.cli:export_main",
            "s4m-compare=speechbrain_s4m.compare:main",
        ]
    },
)
