// A net/http server that prints each request's RemoteAddr on a line of its
// own. Usage: server ADDR [plain] — with "plain", an unmodified net.Listen
// (what the accept()/getpeername() rewrite alone gives), else ttm.Listen.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"

	"ttm"
)

func main() {
	listen := ttm.Listen
	if len(os.Args) > 2 && os.Args[2] == "plain" {
		listen = net.Listen
	}
	l, err := listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("listening")
	http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Println(r.RemoteAddr)
		fmt.Fprintf(w, "hello %s\n", r.RemoteAddr)
	}))
}
