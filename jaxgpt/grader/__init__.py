"""The grader: the task list, loading an implementation (the tasks/ folder, the reference, the notebook's
names), the pytest plugin and the suites' assertions, the differential oracle, running a suite and saying its
verdict, the worker process that runs it, the mistake catalogue's runner and the hints."""
