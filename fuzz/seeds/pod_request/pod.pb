
ø
8
web-0$8b3f1c2e-0000-4000-8000-000000000001default web-0/var/log/pods/default_web-0"0

10.96.0.10default.svc.cluster.localndots:5*P?"	127.0.0.1BT
/kubepods/burstable/pod8b3f
*€€€€€€€€
kernel.shm_rmid_forced1