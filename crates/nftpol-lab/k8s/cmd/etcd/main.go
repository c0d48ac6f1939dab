package main

import etcdmain "go.etcd.io/etcd/server/v3/etcdmain"

import "os"

func main() {
	etcdmain.Main(os.Args)
}
