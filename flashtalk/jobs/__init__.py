"""Many offline jobs (`flashtalk batch`): manifests (`manifest`), the summary and progress (`summary`), a run
on this machine (`local`) or over a Ray cluster (`ray_jobs`); the frames come from the runtime's many-clip
driver (`flashtalk.runtime.batch`)."""
