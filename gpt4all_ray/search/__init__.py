"""The Tune driver: searcher, stoppers, scheduler, progress lines, cluster attach, the plan."""
