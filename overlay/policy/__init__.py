"""NetworkPolicy (networking.k8s.io/v1): the validated model (``model``), Kubernetes'
semantics as a pure evaluator (``semantics``), the nftables compiler and its apply edge
(``nft``), and the namespace and policy objects in etcd (``objects``)."""
