-- A second database on the same server for the warehouse; pmg applies sql/ddl.sql to it.
CREATE DATABASE warehouse;
