"""Render our kustomizations for the tests: the part of kustomize that they use, nothing more.

No kustomize or kubectl binary installs from this machine's registries (PyPI, Debian, npm),
so the tests render overlays with this: `resources` (files and folders), `namespace`,
`images` and JSON6902 `patches` (jsonpatch library). Any other field fails loudly, so an
overlay cannot start depending on a feature these checks would silently skip.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonpatch
import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


class UnsupportedKustomization(ValueError):
    pass


def build(folder: Path) -> list[dict]:
    """The resources that `kustomize build folder` gives, for the supported fields."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise UnsupportedKustomization(f"{folder}: fields {sorted(unknown)} are not rendered by kustomize_lite")
    resources: list[dict] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            resources.extend(build(path))
        else:
            resources.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    resources = copy.deepcopy(resources)
    for patch in spec.get("patches", []):
        _apply_patch(folder, resources, patch)
    for image in spec.get("images", []):
        _set_image(resources, image)
    if "namespace" in spec:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return resources


def _apply_patch(folder: Path, resources: list[dict], patch: dict) -> None:
    target = patch.get("target") or {}
    if set(target) - {"kind", "name"} or set(patch) - {"target", "patch", "path"}:
        raise UnsupportedKustomization(f"{folder}: only target kind/name with an inline or file JSON6902 patch")
    ops = yaml.safe_load(patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text())
    if not isinstance(ops, list):
        raise UnsupportedKustomization(f"{folder}: strategic-merge patches are not rendered by kustomize_lite")
    matched = [i for i, r in enumerate(resources)
               if r["kind"] == target.get("kind", r["kind"]) and r["metadata"]["name"] == target.get("name", r["metadata"]["name"])]
    if not matched:
        raise ValueError(f"{folder}: patch target {target} matches no resource")
    for i in matched:
        resources[i] = jsonpatch.apply_patch(resources[i], ops)


def _set_image(resources: list[dict], image: dict) -> None:
    for resource in resources:
        pod = resource.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
