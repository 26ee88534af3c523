"""Where RCRL's workers run and whether they still do: ranks spread over nodes, a local Ray big enough for
them, and which workers died after an error (so a lost node is reported as one)."""

from __future__ import annotations

import os

from m3ad_rl.core.errors import UsageError


def node_placement_groups(per_node: int, nodes: int, use_gpu: bool, role: str) -> list:
    """One STRICT_PACK placement group per node, each pinned to a different node by its
    ``ray.io/node-id`` label (verl's pool would let Ray put them all on one, and a soft target would
    too when one node has room), so the ranks really are spread: ``actor.nodes``."""
    import ray
    from ray.util.placement_group import placement_group

    bundle = {"CPU": 1, **({"GPU": 1} if use_gpu else {})}
    fits = [
        n["NodeID"] for n in ray.nodes()
        if n["Alive"] and all(n["Resources"].get(k, 0) >= v * per_node for k, v in bundle.items())
    ]  # fmt: skip
    if len(fits) < nodes:
        raise RuntimeError(f"actor.nodes={nodes}, but only {len(fits)} node(s) have room for {per_node} rank(s)")
    pgs = [
        placement_group([dict(bundle) for _ in range(per_node)], strategy="STRICT_PACK", name=f"m3ad-{role}-{i}",
                        bundle_label_selector=[{"ray.io/node-id": node}] * per_node)
        for i, node in enumerate(fits[:nodes])
    ]  # fmt: skip
    ray.get([pg.ready() for pg in pgs])
    return pgs


def reserve(cfg, name: str, log=print, every: float = 60.0):
    """One placement group for what the run holds until its end: the DeepSpeed ranks (with
    ``actor.nodes`` = 1), the reference's own ranks and the rollout workers, granted at once or not
    at all. Reserved one by one, runs sharing a cluster can each hold part of it and wait for the
    rest forever (four sweep variants on 8 CPUs: four actors and four rollout workers, then no room
    for any reward replica). Returns the group and the first bundle of each role (``actor``, ``ref``,
    ``rollout``); while the cluster has no room it waits, saying what for every ``every`` seconds
    (an autoscaling pool may add the node)."""
    import ray
    from ray.util.placement_group import placement_group

    a, r = cfg.actor, cfg.rollout
    rank = {"CPU": 1.0, **({"GPU": 1.0} if a.use_gpu else {})}
    bundles: list[dict[str, float]] = []
    first: dict[str, int] = {}
    if a.nodes == 1:  # several nodes: each node's ranks in their own STRICT_PACK group (node_placement_groups)
        first["actor"] = 0
        bundles += [dict(rank) for _ in range(a.workers)]
        if cfg.grpo.kl_coef > 0 and not cfg.ref.colocate:
            first["ref"] = len(bundles)
            bundles += [dict(rank) for _ in range(a.workers)]
    first["rollout"] = len(bundles)
    bundles += [{"CPU": 1.0, **({"GPU": float(r.num_gpus)} if r.num_gpus else {})} for _ in range(r.workers)]
    pg = placement_group(bundles, strategy="PACK", name=name)
    waited = 0.0
    while not ray.wait([pg.ready()], timeout=every)[0]:
        waited += every
        free = {k: round(v, 2) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
        need = {k: sum(b.get(k, 0) for b in bundles) for k in ("CPU", "GPU") if any(k in b for b in bundles)}
        log(
            f"waiting {waited:.0f} s for the run's workers ({len(bundles)} bundles, {need} in all); the "
            f"cluster has {free} free (another run may hold it, or an autoscaler is adding a node)"
        )
    return pg, first


def resource_requests(cfg) -> list[tuple[str, dict[str, float]]]:
    """What an RCRL run asks Ray for, as (what, bundle) pairs where each bundle must fit on one node:
    every rollout worker, and each node's share of the DeepSpeed ranks (one STRICT_PACK placement
    group per node), twice when the reference policy has its own workers. A cluster (or an autoscaling
    pool) that has no node type for one of them leaves the run pending forever."""
    a, r = cfg.actor, cfg.rollout
    per_node = a.workers // a.nodes
    ranks = {"CPU": float(per_node), **({"GPU": float(per_node)} if a.use_gpu else {})}
    out = [("rollout worker", {"CPU": 1.0, **({"GPU": float(r.num_gpus)} if r.num_gpus else {})})] * r.workers
    out += [(f"{per_node} actor rank(s) on one node", dict(ranks))] * a.nodes
    if cfg.grpo.kl_coef > 0 and not cfg.ref.colocate:
        out += [(f"{per_node} reference rank(s) on one node", dict(ranks))] * a.nodes
    if not cfg.reward_service.url:  # deployed by the run itself (rewards/service.py: 0.5 CPU a replica)
        out += [("reward service replica", {"CPU": 0.5})] * cfg.reward_service.replicas
    return out


def check_local_cpus(address: str | None, need: float) -> None:
    """A local Ray already started in this process (by an SFT run, say) cannot grow: say so rather than
    wait forever for workers that will never be placed. A joined cluster may autoscale, so it is left be."""
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        return
    have = ray.cluster_resources().get("CPU", 0)
    if have < need:
        raise UsageError(f"the local Ray of this process has {have:g} CPUs; this RCRL run needs {need:g}",
                         f"start Ray with more first (m3ad_rl.train.ray_setup.init_ray(num_cpus={int(need) + 2})) "
                         "or run RCRL in its own process")  # fmt: skip


def dead_actors(named: list[tuple[str, object]], timeout: float = 60) -> list[str]:
    """The names of the actors in ``named`` that died. One busy in a collective that will never finish does
    not answer in ``timeout`` and is not counted; its dead peer is. The timeout leaves Ray's health check
    (about 15 s by default) time to declare a vanished node's actors dead."""
    import ray

    pings = {handle.__ray_ready__.remote(): name for name, handle in named}
    ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=timeout) if pings else ([], [])
    dead = []
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:
            dead.append(pings[ref])
    return dead
