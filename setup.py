from setuptools import find_packages, setup

setup(
    name="charrnn",
    version="0.1.0",
    description="Character-level stacked-LSTM language-model trainer (TensorFlow TF1 graph mode)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["charrnn", "charrnn.*"]),
    scripts=["bin/charrnn-train", "bin/charrnn-sample", "bin/charrnn-eval", "bin/charrnn-plot",
             "bin/charrnn-export"],
    python_requires=">=3.9",
    install_requires=[
        "tensorflow>=2.16",
        # TF 2.16+ ships Keras 3; the tf.compat.v1 RNN cells need the legacy tf-keras of the same
        # minor version as TensorFlow (pip resolves the pair; keep both floors in step).
        "tf-keras>=2.16",
        "tensorboard>=2.16",
        "numpy",
        "absl-py",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=7", "pyyaml"],  # pyyaml: the tests read the Kubernetes example
        "gpu": ["tensorflow[and-cuda]>=2.16"],
    },
)
